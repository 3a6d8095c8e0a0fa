//! Gateway API HTTPRoute over real sockets: the documentation's traffic-splitting
//! fixtures loaded unchanged beside a Proxy document, weights (chi-square), every
//! precedence rule, wildcard hosts, header / query / method matches, 500 for
//! unresolvable and all-zero backendRefs, the cluster DNS name form, and validation
//! errors with their paths.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::{
    admin_get, assert_two_way_split, client, proxy_doc, send, split_doc, Answer, Backend, Proxy,
    TestClient,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A folder config: the fixture copied unchanged, a Proxy document beside it.
async fn start_fixture(fixture: &str, services: &[(&str, SocketAddr)]) -> Proxy {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(fixture)).expect("fixture");
    std::fs::write(dir.path().join(fixture), text).expect("copy fixture");
    std::fs::write(dir.path().join("proxy.yaml"), proxy_doc(services, "")).expect("proxy");
    let path = dir.path().to_path_buf();
    Proxy::start_at(dir, path).await
}

/// Backends named `names`, and the services that point at them.
async fn backends(names: &[&'static str]) -> (Vec<Backend>, Vec<(&'static str, SocketAddr)>) {
    let mut list = Vec::new();
    let mut services = Vec::new();
    for name in names {
        let b = Backend::spawn(name).await;
        services.push((*name, b.addr));
        list.push(b);
    }
    (list, services)
}

async fn request(
    c: &TestClient,
    proxy: &Proxy,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(c, req.body(Full::new(Bytes::new())).expect("request")).await
}

async fn get(c: &TestClient, proxy: &Proxy, host: &str, path: &str) -> Answer {
    request(c, proxy, Method::GET, host, path, &[]).await
}

/// How many of `n` GETs each backend (or status, for the proxy's own answers) got.
async fn tally(c: &TestClient, proxy: &Proxy, host: &str, n: usize) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let a = get(c, proxy, host, "/").await;
        let key = if a.status == StatusCode::OK {
            a.backend().to_string()
        } else {
            a.status.as_u16().to_string()
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

fn count(seen: &HashMap<String, u64>, key: &str) -> u64 {
    seen.get(key).copied().unwrap_or(0)
}

/// An HTTPRoute document (v1) with the given spec lines (indented under `spec:`).
fn route_doc(name: &str, extra_meta: &str, spec: &str) -> String {
    let mut s = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: default\n{extra_meta}spec:\n"
    );
    for line in spec.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

async fn start(services: &[(&str, SocketAddr)], docs: &[String]) -> Proxy {
    let mut yaml = proxy_doc(services, "");
    for d in docs {
        yaml.push_str(d);
    }
    Proxy::start(&yaml).await
}

fn load_errors(yaml: &str) -> Vec<String> {
    match splitproxy::config::load_documents(Path::new("config/r.yaml"), yaml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

const PROXY: &str = "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: p\nspec:\n  listen: 127.0.0.1:0\n  services:\n    foo-v1: [\"127.0.0.1:8081\"]\n";

// === the documentation's fixtures ===

#[tokio::test]
async fn traffic_split_2_fixture_splits_90_10() {
    let (_b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let proxy = start_fixture("gateway-traffic-split-2.yaml", &services).await;
    let c = client();
    let seen = tally(&c, &proxy, "foo.example.com", 2000).await;
    let (v1, v2) = (count(&seen, "foo-v1"), count(&seen, "foo-v2"));
    assert_eq!(v1 + v2, 2000, "{seen:?}");
    assert_two_way_split([v1, v2], [90.0, 10.0]);
    // exposeBackend names the service, as for a TrafficSplit (what `measure` reads)
    let a = get(&c, &proxy, "foo.example.com", "/").await;
    assert_eq!(
        a.headers["x-splitproxy-backend"].to_str().unwrap(),
        a.backend()
    );
    // the host is the route's only: another gets 404
    assert_eq!(
        get(&c, &proxy, "bar.example.com", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn traffic_split_1_fixture_sends_the_test_header_to_the_canary() {
    let (b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let proxy = start_fixture("gateway-traffic-split-1.yaml", &services).await;
    let c = client();
    let host = "foo.example.com";
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy, host, "/x").await.backend(), "foo-v1");
        let canary = request(&c, &proxy, Method::GET, host, "/x", &[("traffic", "test")]).await;
        assert_eq!(canary.backend(), "foo-v2");
    }
    // header names are case-insensitive, values are not
    let named = request(&c, &proxy, Method::GET, host, "/", &[("Traffic", "test")]).await;
    assert_eq!(named.backend(), "foo-v2");
    let valued = request(&c, &proxy, Method::GET, host, "/", &[("traffic", "Test")]).await;
    assert_eq!(valued.backend(), "foo-v1");
    assert_eq!(b[1].hits(), 21);
}

#[tokio::test]
async fn traffic_split_3_fixture_never_picks_weight_0() {
    let (b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let proxy = start_fixture("gateway-traffic-split-3.yaml", &services).await;
    let seen = tally(&client(), &proxy, "foo.example.com", 300).await;
    assert_eq!(count(&seen, "foo-v2"), 300, "{seen:?}");
    assert_eq!(b[0].hits(), 0);
}

#[tokio::test]
async fn simple_split_fixture_without_hostnames_serves_every_host() {
    let (_b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let proxy = start_fixture("gateway-simple-split.yaml", &services).await;
    let c = client();
    let mut counts = [0u64; 2];
    for i in 0..1000 {
        let a = get(&c, &proxy, &format!("host-{i}.anything.test"), "/").await;
        match a.backend() {
            "foo-v1" => counts[0] += 1,
            "foo-v2" => counts[1] += 1,
            other => panic!("unexpected answer {} {other:?}", a.status),
        }
    }
    assert_two_way_split(counts, [90.0, 10.0]);
}

#[tokio::test]
async fn v1beta1_fixture_loads_and_splits() {
    let (_b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let proxy = start_fixture("gateway-v1beta1-split.yaml", &services).await;
    let seen = tally(&client(), &proxy, "FOO.example.com.:8443", 1000).await;
    assert_two_way_split(
        [count(&seen, "foo-v1"), count(&seen, "foo-v2")],
        [90.0, 10.0],
    );
    let (_, routes) = admin_get(&proxy, "/routes").await;
    let json: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let split = &json["splits"][0];
    assert_eq!(split["kind"], "HTTPRoute");
    assert_eq!(split["name"], "foo-route/rules[0]");
    assert_eq!(split["httpRoute"]["hostnames"][0], "foo.example.com");
    // counted under the rule's label
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(
        metrics.contains("split=\"default/foo-route/rules[0]\",backend=\"foo-v1\",code=\"2xx\""),
        "{metrics}"
    );
}

// === matches ===

#[tokio::test]
async fn path_prefix_matches_whole_elements() {
    let (_b, services) = backends(&["a", "b"]).await;
    let doc = route_doc(
        "r",
        "",
        "hostnames: [p.test]\nrules:\n- matches:\n  - path: {type: PathPrefix, value: /foo/}\n  backendRefs: [{name: a}]\n- backendRefs: [{name: b}]",
    );
    let proxy = start(&services, &[doc]).await;
    let c = client();
    for (path, want) in [
        ("/foo", "a"),
        ("/foo/", "a"),
        ("/foo/bar", "a"),
        ("/foobar", "b"),
        ("/fo", "b"),
        ("/", "b"),
        // matches see the normalised path
        ("/x/../foo/bar", "a"),
    ] {
        assert_eq!(
            get(&c, &proxy, "p.test", path).await.backend(),
            want,
            "{path}"
        );
    }
}

#[tokio::test]
async fn exact_then_longest_prefix_then_regex() {
    let (_b, services) = backends(&["prefix", "longer", "exact", "regex", "other"]).await;
    let doc = route_doc(
        "r",
        "",
        "hostnames: [p.test]\nrules:\n\
- matches: [{path: {type: RegularExpression, value: \"/api/v[0-9]+/.*\"}}]\n  backendRefs: [{name: regex}]\n\
- matches: [{path: {type: PathPrefix, value: /api}}]\n  backendRefs: [{name: prefix}]\n\
- matches: [{path: {type: PathPrefix, value: /api/v2}}]\n  backendRefs: [{name: longer}]\n\
- matches: [{path: {type: Exact, value: /api/v2/health}}]\n  backendRefs: [{name: exact}]\n\
- matches: [{path: {type: RegularExpression, value: \"/z+\"}}]\n  backendRefs: [{name: other}]",
    );
    let proxy = start(&services, &[doc]).await;
    let c = client();
    for (path, want) in [
        ("/api/v2/health", "exact"),
        ("/api/v2/healthz", "longer"),
        ("/api/v2", "longer"),
        // a regex comes after every prefix that accepts
        ("/api/v3/x", "prefix"),
        ("/zzz", "other"),
    ] {
        assert_eq!(
            get(&c, &proxy, "p.test", path).await.backend(),
            want,
            "{path}"
        );
    }
    // anchored: the whole path must match
    assert_eq!(
        get(&c, &proxy, "p.test", "/zzz/y").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Method, path, headers, the backend that must answer.
type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn method_then_most_headers_then_most_query_params() {
    let (_b, services) = backends(&["method", "two-headers", "one-header", "query", "plain"]).await;
    let doc = route_doc(
        "r",
        "",
        "hostnames: [p.test]\nrules:\n\
- backendRefs: [{name: plain}]\n\
- matches: [{queryParams: [{name: q, value: \"1\"}]}]\n  backendRefs: [{name: query}]\n\
- matches: [{headers: [{name: x-a, value: \"1\"}]}]\n  backendRefs: [{name: one-header}]\n\
- matches: [{headers: [{name: x-a, value: \"1\"}, {name: x-b, type: RegularExpression, value: \"[0-9]+\"}]}]\n  backendRefs: [{name: two-headers}]\n\
- matches: [{method: POST}]\n  backendRefs: [{name: method}]",
    );
    let proxy = start(&services, &[doc]).await;
    let c = client();
    let both = [("x-a", "1"), ("x-b", "42")];
    let cases: [Case; 8] = [
        (Method::POST, "/", &both, "method"),
        (Method::GET, "/", &both, "two-headers"),
        (
            Method::GET,
            "/",
            &[("x-a", "1"), ("x-b", "4x")],
            "one-header",
        ),
        (Method::GET, "/?q=1", &[("x-a", "1")], "one-header"),
        (Method::GET, "/?q=1", &[], "query"),
        (Method::GET, "/?a=2&q=1", &[], "query"),
        // names are exact, and the first value counts
        (Method::GET, "/?Q=1&q=2&q=1", &[], "plain"),
        (Method::GET, "/", &[], "plain"),
    ];
    for (method, path, headers, want) in cases {
        let a = request(&c, &proxy, method.clone(), "p.test", path, headers).await;
        assert_eq!(a.backend(), want, "{method} {path} {headers:?}");
    }
}

#[tokio::test]
async fn equal_matches_go_to_the_oldest_route_then_by_name_then_rule_order() {
    let (_b, services) = backends(&["alpha", "zeta", "first", "second"]).await;
    let spec = |host: &str, backend: &str| {
        format!("hostnames: [{host}]\nrules:\n- matches: [{{path: {{value: /x}}}}]\n  backendRefs: [{{name: {backend}}}]")
    };
    let docs = [
        // alpha sorts first by name but is younger: zeta wins on age
        route_doc(
            "alpha",
            "  creationTimestamp: \"2024-05-02T00:00:00Z\"\n",
            &spec("age.test", "alpha"),
        ),
        route_doc(
            "zeta",
            "  creationTimestamp: \"2024-05-01T00:00:00Z\"\n",
            &spec("age.test", "zeta"),
        ),
        // no timestamps: by namespace/name
        route_doc("zeta-2", "", &spec("name.test", "zeta")),
        route_doc("alpha-2", "", &spec("name.test", "alpha")),
        // one route: rule order
        route_doc(
            "rules",
            "",
            "hostnames: [order.test]\nrules:\n- matches: [{path: {value: /x}}]\n  backendRefs: [{name: first}]\n- matches: [{path: {value: /x}}]\n  backendRefs: [{name: second}]",
        ),
    ];
    let proxy = start(&services, &docs).await;
    let c = client();
    for (host, want) in [
        ("age.test", "zeta"),
        ("name.test", "alpha"),
        ("order.test", "first"),
    ] {
        for _ in 0..5 {
            assert_eq!(
                get(&c, &proxy, host, "/x/y").await.backend(),
                want,
                "{host}"
            );
        }
    }
}

#[tokio::test]
async fn wildcard_hostnames_and_routes_without_hostnames() {
    let (_b, services) = backends(&["exact", "wild", "deeper", "any"]).await;
    let docs = [
        route_doc(
            "exact",
            "",
            "hostnames: [a.example.com]\nrules:\n- matches: [{path: {value: /only}}]\n  backendRefs: [{name: exact}]",
        ),
        route_doc("wild", "", "hostnames: [\"*.example.com\"]\nrules:\n- backendRefs: [{name: wild}]"),
        route_doc("deeper", "", "hostnames: [\"*.b.example.com\"]\nrules:\n- backendRefs: [{name: deeper}]"),
        route_doc("any", "", "rules:\n- backendRefs: [{name: any}]"),
    ];
    let proxy = start(&services, &docs).await;
    let c = client();
    for (host, path, want) in [
        ("a.example.com", "/only", "exact"),
        ("A.Example.COM.:8443", "/only/x", "exact"),
        // the exact route has no rule for this path: the wildcard's rules come next
        ("a.example.com", "/else", "wild"),
        ("x.example.com", "/", "wild"),
        ("x.y.example.com", "/", "wild"),
        ("x.b.example.com", "/", "deeper"),
        ("b.example.com", "/", "wild"),
        // a wildcard never matches its bare suffix
        ("example.com", "/", "any"),
        ("other.org", "/", "any"),
    ] {
        assert_eq!(
            get(&c, &proxy, host, path).await.backend(),
            want,
            "{host}{path}"
        );
    }
}

// === backendRefs ===

#[tokio::test]
async fn an_unresolvable_backend_ref_answers_its_share_with_500() {
    let (_b, services) = backends(&["real"]).await;
    let doc = route_doc(
        "half",
        "",
        "hostnames: [h.test]\nrules:\n- backendRefs:\n  - {name: real, weight: 50}\n  - {name: ghost, weight: 50}",
    );
    let proxy = start(&services, &[doc]).await;
    let c = client();
    let seen = tally(&c, &proxy, "h.test", 1000).await;
    let (ok, failed) = (count(&seen, "real"), count(&seen, "500"));
    assert_eq!(ok + failed, 1000, "{seen:?}");
    assert_two_way_split([ok, failed], [1.0, 1.0]);
    // the answer is the proxy's own, and says which rule and ref
    let a = loop {
        let a = get(&c, &proxy, "h.test", "/").await;
        if a.status == StatusCode::INTERNAL_SERVER_ERROR {
            break a;
        }
    };
    assert_eq!(a.headers["server"], "splitproxy");
    assert!(a.body.contains("default/half/rules[0]"), "{}", a.body);
    assert!(a.body.contains("ghost"), "{}", a.body);
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let series = format!("splitproxy_requests_total{{split=\"default/half/rules[0]\",backend=\"ghost\",code=\"5xx\"}} {}", failed + 1);
    assert!(metrics.contains(&series), "{series} not in {metrics}");
}

#[tokio::test]
async fn rules_with_nothing_to_send_to_answer_500() {
    let (b, services) = backends(&["a", "b"]).await;
    let doc = route_doc(
        "empty",
        "",
        "hostnames: [zero.test]\nrules:\n\
- matches: [{path: {value: /zero}}]\n  backendRefs: [{name: a, weight: 0}, {name: b, weight: 0}]\n\
- matches: [{path: {value: /none}}]\n\
- matches: [{path: {value: /ghosts}}]\n  backendRefs: [{name: ghost}, {name: ghost-2, weight: 3}]",
    );
    let proxy = start(&services, &[doc]).await;
    let c = client();
    for path in ["/zero", "/none", "/ghosts"] {
        for _ in 0..10 {
            let a = get(&c, &proxy, "zero.test", path).await;
            assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            assert_eq!(a.headers["server"], "splitproxy");
        }
    }
    assert_eq!(b[0].hits() + b[1].hits(), 0);
}

#[tokio::test]
async fn a_backend_ref_with_a_port_resolves_to_the_cluster_dns_name() {
    let (_b, services) = backends(&["local"]).await;
    let doc = route_doc(
        "dns",
        "",
        "hostnames: [d.test]\nrules:\n- backendRefs:\n  - {name: local, port: 80}\n  - {name: reviews, port: 9080}\n  - {name: ratings, namespace: prod, port: 8080, weight: 0}",
    );
    let proxy = start(&services, &[doc]).await;
    let (_, routes) = admin_get(&proxy, "/routes").await;
    let json: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let split = &json["splits"][0];
    let services: Vec<&str> = split["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["service"].as_str().unwrap())
        .collect();
    // spec.services wins; else <name>.<namespace>.svc.cluster.local:<port>
    assert_eq!(
        services,
        [
            "local",
            "reviews.default.svc.cluster.local:9080",
            "ratings.prod.svc.cluster.local:8080"
        ]
    );
    assert_eq!(
        split["httpRoute"]["backendRefs"][2]["resolvesTo"],
        "ratings.prod.svc.cluster.local:8080"
    );
}

// === validation ===

#[test]
fn unsupported_fields_are_errors_naming_their_path() {
    let doc = route_doc(
        "foo-route",
        "",
        "rules:\n\
- filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n  backendRefs: [{name: foo-v1}]\n\
- timeouts: {request: 10s}\n  backendRefs:\n  - name: foo-v1\n    filters: [{type: RequestHeaderModifier}]\n\
- sessionPersistence: {type: Cookie}\n  backendRefs: [{name: foo-v1, kind: ServiceImport, group: multicluster.x-k8s.io}]",
    );
    let errors = load_errors(&format!("{PROXY}{doc}"));
    let want = [
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[0].filters[0]: not supported by splitproxy (type RequestRedirect)",
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[1].timeouts: not supported by splitproxy",
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[1].backendRefs[0].filters[0]: not supported by splitproxy (type RequestHeaderModifier)",
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[2].sessionPersistence: not supported by splitproxy",
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[2].backendRefs[0].group: not supported by splitproxy",
        "config/r.yaml: document 2 (HTTPRoute foo-route): spec.rules[2].backendRefs[0].kind: not supported by splitproxy",
    ];
    for w in want {
        assert!(
            errors.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errors:#?}"
        );
    }
    // an unknown field is refused with its path, never dropped
    let typo = route_doc(
        "foo-route",
        "",
        "rules:\n- backendRefs: [{name: foo-v1}]\n  retries: 3",
    );
    let errors = load_errors(&format!("{PROXY}{typo}"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.rules[0]") && e.contains("retries")),
        "{errors:#?}"
    );
    // bad values name their field
    let bad = route_doc(
        "foo-route",
        "  annotations:\n    splitproxy.dev/selection: deterministic\n",
        "hostnames: [\"10.0.0.1\"]\nrules:\n- matches: [{path: {type: Exact, value: no-slash}, method: FETCH}]\n  backendRefs: [{name: foo-v1, weight: -1}]",
    );
    let errors = load_errors(&format!("{PROXY}{bad}"));
    for field in [
        "spec.hostnames[0]",
        "spec.rules[0].matches[0].path.value",
        "spec.rules[0].matches[0].method",
        "spec.rules[0].backendRefs[0].weight: must not be negative, got -1",
        "metadata.annotations.splitproxy.dev/selection: not supported by splitproxy",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{field} not in {errors:#?}"
        );
    }
}

#[test]
fn a_host_in_a_traffic_split_and_an_http_route_is_an_error_naming_both() {
    let route = route_doc(
        "web-route",
        "",
        "hostnames: [web.default.svc]\nrules:\n- backendRefs: [{name: foo-v1}]",
    );
    let yaml = format!(
        "{PROXY}{}{route}",
        split_doc("web-split", "web", &[("foo-v1", 1)])
    );
    let errors = load_errors(&yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert!(
        e.starts_with("config/r.yaml: document 3 (HTTPRoute web-route): spec.hostnames[0]:"),
        "{e}"
    );
    assert!(
        e.contains("TrafficSplit default/web-split (config/r.yaml: document 2)"),
        "{e}"
    );
}

#[test]
fn an_unresolvable_ref_is_a_warning_and_the_rest_loads() {
    let route = route_doc(
        "r",
        "",
        "rules:\n- backendRefs: [{name: foo-v1}, {name: nowhere}]",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, format!("{PROXY}{route}")).expect("write");
    let read = splitproxy::config::read(&path);
    let config = read.result.expect("valid");
    assert_eq!(config.httproutes.len(), 1);
    assert!(
        read.warnings
            .iter()
            .any(|w| w.contains("spec.rules[0].backendRefs[1]")
                && w.contains("\"nowhere\"")
                && w.contains("500")),
        "{:#?}",
        read.warnings
    );
}

#[tokio::test]
async fn a_reload_moves_an_http_route_to_new_weights() {
    let (b, services) = backends(&["foo-v1", "foo-v2"]).await;
    let text = |f: &str| std::fs::read_to_string(Path::new(FIXTURES).join(f)).expect("fixture");
    let proxy_yaml = proxy_doc(&services, "");
    let proxy = Proxy::start(&format!(
        "{proxy_yaml}---\n{}",
        text("gateway-traffic-split-1.yaml")
    ))
    .await;
    let c = client();
    assert_eq!(
        get(&c, &proxy, "foo.example.com", "/").await.backend(),
        "foo-v1"
    );
    // the guide's last step: foo-v1 at weight 0
    proxy.rewrite(&format!(
        "{proxy_yaml}---\n{}",
        text("gateway-traffic-split-3.yaml")
    ));
    proxy.wait_version(2).await;
    let before = b[0].hits();
    let seen = tally(&c, &proxy, "foo.example.com", 100).await;
    assert_eq!(count(&seen, "foo-v2"), 100, "{seen:?}");
    assert_eq!(b[0].hits(), before);
}
