//! Property tests over real sockets: a rejected configuration never changes the live
//! table (generated breakages of a valid file, reloaded into a running proxy), and every
//! spelling of a routed host reaches its split.

use std::net::SocketAddr;

use http::StatusCode;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};

use crate::support::*;

/// One way to make the configuration invalid, at validation or at the table build.
#[derive(Debug, Clone)]
enum Breakage {
    NegativeWeight(i64),
    UnknownBackend(String),
    DuplicateBackend,
    UnknownProxyField(String),
    DuplicateKey,
    WrongType,
    BadDuration(String),
    BadEndpoint(&'static str),
    UnsupportedVersion(&'static str),
    YamlSyntax(&'static str),
    SecondProxy,
    NoProxy,
    DuplicateRoot,
    UnknownSelection(String),
    UnknownAnnotation,
    TooManyRetries(u64),
    HeaderLimitTooSmall(u64),
    BadAccess(String),
    MissingRouteGroup,
    BadTrustDomain,
    ScheduleTooLong,
    MissingCertificate,
    /// Passes validation; the table build refuses it.
    GarbageUpstreamCa,
}

fn breakage() -> impl Strategy<Value = Breakage> {
    use Breakage::*;
    prop_oneof![
        (1i64..=1_000_000).prop_map(NegativeWeight),
        "[a-z]{1,8}".prop_map(|s| UnknownBackend(format!("x-{s}"))),
        Just(DuplicateBackend),
        "[a-z]{1,10}".prop_map(|s| UnknownProxyField(format!("x{s}"))),
        Just(DuplicateKey),
        Just(WrongType),
        "[0-9]{1,4}(x|d|w|sec|us)?".prop_map(BadDuration),
        select(
            &[
                "host",
                "host:0",
                "host:70000",
                ":80",
                "a b:80",
                "127.0.0.1:0",
                "[::1]",
                ""
            ][..]
        )
        .prop_map(BadEndpoint),
        select(
            &[
                "split.smi-spec.io/v1beta9",
                "split.smi-spec.io/",
                "splitproxy.dev/v2"
            ][..]
        )
        .prop_map(UnsupportedVersion),
        select(&["key: [unclosed", "\t- tab", "a: b: c", "{[}"][..]).prop_map(YamlSyntax),
        Just(SecondProxy),
        Just(NoProxy),
        Just(DuplicateRoot),
        "[a-z]{1,8}".prop_map(|s| UnknownSelection(format!("x{s}"))),
        Just(UnknownAnnotation),
        (11u64..=1_000).prop_map(TooManyRetries),
        (1u64..1024).prop_map(HeaderLimitTooSmall),
        "[a-z]{1,8}".prop_map(|s| BadAccess(format!("x{s}"))),
        Just(MissingRouteGroup),
        Just(BadTrustDomain),
        Just(ScheduleTooLong),
        Just(MissingCertificate),
        Just(GarbageUpstreamCa),
    ]
}

/// A configuration as parts: one Proxy document, one TrafficSplit of root `web` over
/// `a` and `b`, and whatever the breakages add.
struct Draft {
    a: SocketAddr,
    b: SocketAddr,
    proxy_api: &'static str,
    split_api: &'static str,
    proxy: bool,
    spec: Vec<String>,
    services: Vec<String>,
    annotations: Vec<String>,
    matches: bool,
    backends: Vec<(String, String)>,
    docs: Vec<String>,
}

impl Draft {
    /// The valid configuration: every request to `web` goes to `a`.
    fn valid(a: SocketAddr, b: SocketAddr) -> Draft {
        Draft {
            a,
            b,
            proxy_api: "splitproxy.dev/v1alpha1",
            split_api: "split.smi-spec.io/v1alpha2",
            proxy: true,
            spec: Vec::new(),
            services: Vec::new(),
            annotations: Vec::new(),
            matches: false,
            backends: vec![("a".into(), "1".into()), ("b".into(), "0".into())],
            docs: Vec::new(),
        }
    }

    /// The valid configuration with all traffic moved to `b`, broken by `breakages`: if
    /// any of it took effect, requests would reach `b`.
    fn broken(a: SocketAddr, b: SocketAddr, breakages: &[Breakage]) -> Draft {
        let mut d = Draft::valid(a, b);
        d.backends = vec![("a".into(), "0".into()), ("b".into(), "1".into())];
        for x in breakages {
            d.apply(x);
        }
        d
    }

    fn apply(&mut self, x: &Breakage) {
        use Breakage::*;
        let unused = "[\"127.0.0.1:9\"]";
        match x {
            NegativeWeight(n) => {
                self.services.push(format!("neg: {unused}"));
                self.backends.push(("neg".into(), format!("-{n}")));
            }
            UnknownBackend(name) => self.backends.push((name.clone(), "1".into())),
            DuplicateBackend => self.backends.push(("b".into(), "1".into())),
            UnknownProxyField(name) => self.spec.push(format!("{name}: 1")),
            DuplicateKey => self.spec.push("listen: 127.0.0.1:0".into()),
            WrongType => self.spec.push("retries: {attempts: \"two\"}".into()),
            BadDuration(text) => self.spec.push(format!("timeouts: {{connect: \"{text}\"}}")),
            BadEndpoint(e) => self.services.push(format!("badep: [\"{e}\"]")),
            UnsupportedVersion(v) if v.starts_with("split.") => self.split_api = v,
            UnsupportedVersion(v) => self.proxy_api = v,
            YamlSyntax(text) => self.docs.push((*text).to_string()),
            SecondProxy => self.docs.push(
                "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata: {name: other}\nspec: {}"
                    .into(),
            ),
            NoProxy => self.proxy = false,
            DuplicateRoot => self.docs.push(
                "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s2}\nspec:\n  service: web\n  backends: [{service: b, weight: 1}]"
                    .into(),
            ),
            UnknownSelection(s) => self
                .annotations
                .push(format!("splitproxy.dev/selection: {s}")),
            UnknownAnnotation => self.annotations.push("splitproxy.dev/typo: x".into()),
            TooManyRetries(n) => self.spec.push(format!("retries: {{attempts: {n}}}")),
            HeaderLimitTooSmall(n) => {
                self.spec.push(format!("limits: {{requestHeaderBytes: {n}}}"))
            }
            BadAccess(s) => self.spec.push(format!("access: {s}")),
            MissingRouteGroup => self.matches = true,
            BadTrustDomain => self.spec.push("trustDomain: \"bad domain!\"".into()),
            ScheduleTooLong => {
                self.annotations
                    .push("splitproxy.dev/selection: deterministic".into());
                self.services.push(format!("long: {unused}"));
                self.backends.push(("long".into(), (1u64 << 20).to_string()));
            }
            MissingCertificate => self
                .spec
                .push("tls: {cert: missing.pem, key: missing-key.pem}".into()),
            GarbageUpstreamCa => self
                .services
                .push(format!("badca: {{endpoints: {unused}, tls: {{ca: garbage.pem}}}}")),
        }
    }

    fn render(&self) -> String {
        let mut s = String::new();
        if self.proxy {
            s += &format!(
                "apiVersion: {}\nkind: Proxy\nmetadata:\n  name: test\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  exposeBackend: true\n",
                self.proxy_api
            );
            for line in &self.spec {
                s += &format!("  {line}\n");
            }
            s += &format!(
                "  services:\n    a: [\"{}\"]\n    b: [\"{}\"]\n",
                self.a, self.b
            );
            for line in &self.services {
                s += &format!("    {line}\n");
            }
        }
        s += &format!(
            "---\napiVersion: {}\nkind: TrafficSplit\nmetadata:\n  name: s\n  namespace: default\n",
            self.split_api
        );
        if !self.annotations.is_empty() {
            s += "  annotations:\n";
            for line in &self.annotations {
                s += &format!("    {line}\n");
            }
        }
        s += "spec:\n  service: web\n";
        if self.matches {
            s += "  matches: [{kind: HTTPRouteGroup, name: nope}]\n";
        }
        s += "  backends:\n";
        for (service, weight) in &self.backends {
            s += &format!("  - service: {service}\n    weight: {weight}\n");
        }
        for doc in &self.docs {
            s += &format!("---\n{doc}\n");
        }
        s
    }
}

/// `/routes` without what changes on its own: the last reload's errors and the counts.
fn stable_routes(body: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(body).expect("/routes is JSON");
    if let Some(m) = v.as_object_mut() {
        m.remove("lastReloadErrors");
    }
    for split in v["splits"].as_array_mut().into_iter().flatten() {
        for b in split["backends"].as_array_mut().into_iter().flatten() {
            if let Some(m) = b.as_object_mut() {
                m.remove("requests");
                m.remove("observedShare");
            }
        }
    }
    v
}

fn fail(why: String) -> TestCaseError {
    TestCaseError::fail(why)
}

#[test]
fn a_rejected_configuration_never_changes_the_live_table() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = rt.block_on(async { (Backend::spawn("a").await, Backend::spawn("b").await) });
    let proxy = rt.block_on(Proxy::start(&Draft::valid(a.addr, b.addr).render()));
    std::fs::write(
        proxy.dir.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write garbage.pem");
    let server = proxy.server.as_ref().expect("running");
    let c = rt.block_on(async { client() });
    let baseline = stable_routes(&rt.block_on(admin_get(&proxy, "/routes")).1);
    assert_eq!(baseline["version"], 1);

    let mut runner = TestRunner::new(PropConfig {
        cases: 12,
        // the property holds for the live proxy's state: no file to persist failures to
        failure_persistence: None,
        ..PropConfig::default()
    });
    // a configuration that got through changes what later cases see, so the first failure
    // is the one to report, not the case proptest shrinks to
    let first = std::sync::Mutex::new(None::<String>);
    let result = runner.run(&proptest::collection::vec(breakage(), 1..=3), |breakages| {
        let yaml = Draft::broken(a.addr, b.addr, &breakages).render();
        proxy.rewrite(&yaml);
        let outcome = rt.block_on(async {
            if let Ok(outcome) = server.reload().await {
                return Err(fail(format!("accepted ({outcome:?}):\n{yaml}")));
            }
            if server.version() != 1 {
                return Err(fail(format!("version {}:\n{yaml}", server.version())));
            }
            if server.last_reload_errors().is_empty() {
                return Err(fail(format!("no errors shown for:\n{yaml}")));
            }
            let routes = stable_routes(&admin_get(&proxy, "/routes").await.1);
            if routes != baseline {
                return Err(fail(format!("/routes changed to {routes}:\n{yaml}")));
            }
            let answer = get(&c, &proxy.url("/"), "web").await;
            if (answer.status, answer.backend()) != (StatusCode::OK, "a") {
                return Err(fail(format!(
                    "served {} by {:?}:\n{yaml}",
                    answer.status,
                    answer.backend()
                )));
            }
            Ok(())
        });
        if let Err(e) = &outcome {
            first
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("{breakages:?}: {e}"));
        }
        outcome
    });
    if let Err(e) = result {
        panic!(
            "{}\n(shrunk to: {e})",
            first.lock().unwrap().take().unwrap_or_default()
        );
    }

    // the same change without a breakage does take effect: the checks above can fail
    proxy.rewrite(&Draft::broken(a.addr, b.addr, &[]).render());
    rt.block_on(async {
        proxy.wait_version(2).await;
        assert_eq!(get(&c, &proxy.url("/"), "web").await.backend(), "b");
        assert_ne!(
            stable_routes(&admin_get(&proxy, "/routes").await.1),
            baseline
        );
    });
    assert!(b.hits() > 0 && a.hits() >= 12);
}

/// A host as a client may write it: any form of the split's root, any ASCII case, with
/// or without a port and a trailing dot.
#[derive(Debug, Clone)]
struct Spelling {
    split: usize,
    form: usize,
    case: u64,
    dot: bool,
    port: Option<u16>,
}

fn spell(forms: &[String], s: &Spelling) -> String {
    let mut host: String = forms[s.form % forms.len()]
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if s.case >> (i % 64) & 1 == 1 {
                ch.to_ascii_uppercase()
            } else {
                ch
            }
        })
        .collect();
    if s.dot {
        host.push('.');
    }
    if let Some(port) = s.port {
        host += &format!(":{port}");
    }
    host
}

#[test]
fn every_spelling_of_a_host_reaches_its_split() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backends = rt.block_on(async {
        [
            Backend::spawn("web").await,
            Backend::spawn("api").await,
            Backend::spawn("shop").await,
        ]
    });
    // (split name, namespace, root service, backend)
    let splits = [
        ("web", "default", "web", "web"),
        ("api", "prod", "api", "api"),
        ("shop", "default", "shop.example.com", "shop"),
    ];
    let services: Vec<(&str, SocketAddr)> =
        backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let mut yaml = proxy_doc(&services, "");
    for (name, ns, root, backend) in splits {
        yaml += &split_doc(name, root, &[(backend, 1)])
            .replace("namespace: default", &format!("namespace: {ns}"));
    }
    let proxy = rt.block_on(Proxy::start(&yaml));
    let c = rt.block_on(async { client() });
    let forms: Vec<Vec<String>> = splits
        .iter()
        .map(|(_, ns, root, _)| splitproxy::config::host_forms(root, ns))
        .collect();

    let spelling = (
        0usize..3,
        0usize..5,
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(split, form, case, dot, port)| Spelling {
            split,
            form,
            case,
            dot,
            port,
        });
    let mut runner = TestRunner::new(PropConfig {
        cases: 24,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let result = runner.run(&spelling, |s| {
        let host = spell(&forms[s.split], &s);
        let expected = splits[s.split].3;
        rt.block_on(async {
            let answer = get(&c, &proxy.url("/"), &host).await;
            if (answer.status, answer.backend()) != (StatusCode::OK, expected) {
                return Err(fail(format!(
                    "{host:?}: {} from {:?}",
                    answer.status,
                    answer.backend()
                )));
            }
            // one more letter in front is another host, however it is spelled
            let other = format!("x{host}");
            let answer = get(&c, &proxy.url("/"), &other).await;
            if answer.status != StatusCode::NOT_FOUND {
                return Err(fail(format!(
                    "{other:?}: {} from {:?}",
                    answer.status,
                    answer.backend()
                )));
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
