//! A structure-aware model of the configuration documents (`Proxy`, `TrafficSplit`,
//! `HTTPRouteGroup`, `TrafficTarget`), derived with `arbitrary` and written out as YAML, so
//! that the fuzzer spends its time in validation rather than in the YAML parser.
//!
//! Every field is usually of the right shape (`F::Good`) and sometimes anything (`F::Any`);
//! names come from small pools so that cross-references (backends to services, matches to
//! route groups) resolve often enough to reach the checks behind them. A document can also
//! be one of tests/fixtures with structural edits applied.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use serde_yaml::{Mapping, Value};

/// A YAML value for a model node.
pub trait Yaml {
    fn yaml(&self) -> Value;
}

/// One configuration file: its documents in order.
#[derive(Arbitrary, Debug)]
pub struct File {
    pub docs: Vec<Doc>,
}

impl File {
    /// The file's text: each document as YAML, separated by `---`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for doc in &self.docs {
            for value in doc.values() {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&value).unwrap_or_default());
            }
        }
        out
    }
}

#[derive(Arbitrary, Debug)]
pub enum Doc {
    Proxy(Box<Proxy>),
    Split(Split),
    Group(Group),
    Target(Target),
    Fixture(Fixture),
    /// A kind splitproxy does not read: skipped with a warning.
    Other(Word, Word),
    Empty,
}

impl Doc {
    fn values(&self) -> Vec<Value> {
        match self {
            Doc::Proxy(d) => vec![d.yaml()],
            Doc::Split(d) => vec![d.yaml()],
            Doc::Group(d) => vec![d.yaml()],
            Doc::Target(d) => vec![d.yaml()],
            Doc::Fixture(f) => f.values(),
            Doc::Other(api, kind) => vec![map([
                ("apiVersion", Some(api.yaml())),
                ("kind", Some(kind.yaml())),
            ])],
            Doc::Empty => vec![Value::Null],
        }
    }
}

// === leaves ===

/// A field's value: usually the right shape, sometimes any value at all.
#[derive(Arbitrary, Debug)]
pub enum F<T> {
    Good(T),
    Any(Leaf),
}

impl<T: Yaml> Yaml for F<T> {
    fn yaml(&self) -> Value {
        match self {
            F::Good(t) => t.yaml(),
            F::Any(l) => l.yaml(),
        }
    }
}

/// Any value, one level deep (nesting is the typed nodes' job).
#[derive(Arbitrary, Debug)]
pub enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Small(u8),
    Float(f64),
    Word(Word),
    File(FileName),
    Text(String),
    List(Vec<Scalar>),
    Map(Vec<(Word, Scalar)>),
}

impl Yaml for Leaf {
    fn yaml(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => Value::Bool(*b),
            Leaf::Int(i) => Value::from(*i),
            Leaf::Small(i) => Value::from(*i),
            Leaf::Float(f) => Value::from(*f),
            Leaf::Word(w) => w.yaml(),
            Leaf::File(f) => f.yaml(),
            Leaf::Text(s) => Value::String(s.clone()),
            Leaf::List(l) => Value::Sequence(l.iter().map(Yaml::yaml).collect()),
            Leaf::Map(m) => Value::Mapping(m.iter().map(|(k, v)| (k.yaml(), v.yaml())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Word(Word),
    Text(String),
}

impl Yaml for Scalar {
    fn yaml(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::from(*i),
            Scalar::Word(w) => w.yaml(),
            Scalar::Text(s) => Value::String(s.clone()),
        }
    }
}

impl Yaml for bool {
    fn yaml(&self) -> Value {
        Value::Bool(*self)
    }
}

impl<T: Yaml> Yaml for Vec<T> {
    fn yaml(&self) -> Value {
        Value::Sequence(self.iter().map(Yaml::yaml).collect())
    }
}

/// Picks from a pool of strings by index.
macro_rules! pool {
    ($name:ident, $doc:literal, [$($s:literal),* $(,)?]) => {
        #[doc = $doc]
        #[derive(Arbitrary, Debug, Clone, Copy)]
        pub struct $name(pub u8);
        impl $name {
            const POOL: &'static [&'static str] = &[$($s),*];
            pub fn as_str(&self) -> &'static str {
                Self::POOL[self.0 as usize % Self::POOL.len()]
            }
        }
        impl Yaml for $name {
            fn yaml(&self) -> Value {
                Value::String(self.as_str().to_string())
            }
        }
    };
}

pool!(
    Svc,
    "A service name: short, qualified, odd.",
    [
        "web",
        "web-v1",
        "web-v2",
        "api",
        "api-v1",
        "Web-V1",
        "web.prod",
        "web.prod.svc",
        "web.default.svc.cluster.local",
        "www.example.com",
        "",
        "a..b",
        "web.",
        "-",
        "WEB",
    ]
);

pool!(
    Ns,
    "A namespace.",
    ["default", "prod", "Prod", "", "a.b", "kube-system"]
);

pool!(
    Word,
    "Names, keywords and values the documents use, and a few they must refuse.",
    [
        "web",
        "web-v1",
        "web-v2",
        "api",
        "default",
        "prod",
        "ab-test",
        "gateway",
        "split",
        "HTTPRouteGroup",
        "ServiceAccount",
        "TrafficSplit",
        "Proxy",
        "HTTPRouteGroupX",
        "random",
        "deterministic",
        "sticky",
        "unknown",
        "x-user",
        "session",
        "bad header",
        "permissive",
        "enforce",
        "require",
        "optional",
        "none",
        "cluster.local",
        "Example.COM",
        "bad domain!",
        "spec",
        "metadata",
        "name",
        "namespace",
        "services",
        "endpoints",
        "weight",
        "backends",
        "matches",
        "tls",
        "ca",
        "listen",
        "extra",
        "rules",
        "specs",
        "sources",
        "destination",
        "pathRegex",
        "methods",
        "headers",
        "annotations",
        "kind",
        "apiVersion",
        "v1",
        "splitproxy.dev/v1alpha1",
        "split.smi-spec.io/v1alpha2",
        "specs.smi-spec.io/v1alpha4",
        "access.smi-spec.io/v1alpha3",
        "ConfigMap",
        "",
        "service",
        "timeouts",
        "connect",
        "upstream",
        "cert",
        "key",
        "clientCA",
        "clientAuth",
        "access",
        "limits",
        "retries",
        "attempts",
        "outlierDetection",
        "exposeBackend",
        "trustDomain",
        "admin",
        "my-website",
        "my-website-v1",
        "my-website-v2",
        "website-v1",
    ]
);

pool!(
    FileName,
    "A file a document names, relative to the config folder.",
    [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
        "garbage.pem",
        "missing.pem",
        ".",
        "",
    ]
);

pool!(
    Annotation,
    "An annotation key.",
    [
        "splitproxy.dev/selection",
        "splitproxy.dev/sticky-header",
        "splitproxy.dev/sticky-cookie",
        "splitproxy.dev/service-account",
        "splitproxy.dev/typo",
        "example.com/other",
    ]
);

pool!(
    Regex,
    "A path or header regex, valid or not.",
    [
        "/api",
        "/api/.*",
        ".*",
        "(",
        "[a-z]+",
        "/v[0-9]+/",
        "a{2,5}",
        "",
        "\\",
        ".*Firefox.*",
        "(?i)/admin",
    ]
);

pool!(
    Method,
    "An HTTP method, valid or not.",
    [
        "GET",
        "POST",
        "*",
        "get",
        "PATCH",
        "BAD METHOD",
        "",
        "PROPFIND",
    ]
);

/// `host:port` forms for `listen` and `admin`.
#[derive(Arbitrary, Debug)]
pub enum Addr {
    V4(u8, u16),
    AnyV4(u16),
    Localhost(u16),
    V6(u16),
    Text(String),
}

impl Yaml for Addr {
    fn yaml(&self) -> Value {
        Value::String(match self {
            Addr::V4(last, port) => format!("127.0.0.{last}:{port}"),
            Addr::AnyV4(port) => format!(":{port}"),
            Addr::Localhost(port) => format!("localhost:{port}"),
            Addr::V6(port) => format!("[::1]:{port}"),
            Addr::Text(s) => s.clone(),
        })
    }
}

/// A `spec.services` endpoint.
#[derive(Arbitrary, Debug)]
pub enum Endpoint {
    V4(u8, u16),
    V6(u16),
    Dns(Svc, u16),
    Text(String),
}

impl Yaml for Endpoint {
    fn yaml(&self) -> Value {
        Value::String(match self {
            Endpoint::V4(last, port) => format!("127.0.0.{last}:{port}"),
            Endpoint::V6(port) => format!("[::1]:{port}"),
            Endpoint::Dns(name, port) => format!("{}:{port}", name.as_str()),
            Endpoint::Text(s) => s.clone(),
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Unit {
    Ms,
    S,
    M,
    H,
    Bare,
    Day,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::M => "m",
            Unit::H => "h",
            Unit::Bare => "",
            Unit::Day => "d",
        }
    }
}

/// A duration such as `500ms`, `1.5s`, `1m30s`.
#[derive(Arbitrary, Debug)]
pub struct Dur {
    n: u32,
    frac: Option<u8>,
    unit: Unit,
    more: Option<(u16, Unit)>,
}

impl Yaml for Dur {
    fn yaml(&self) -> Value {
        let mut s = self.n.to_string();
        if let Some(f) = self.frac {
            s.push_str(&format!(".{f}"));
        }
        s.push_str(self.unit.as_str());
        if let Some((n, u)) = self.more {
            s.push_str(&format!("{n}{}", u.as_str()));
        }
        Value::String(s)
    }
}

/// A size: a number of bytes or a number with a unit.
#[derive(Arbitrary, Debug)]
pub enum Size {
    Bytes(u64),
    Unit(u32, u8),
}

impl Yaml for Size {
    fn yaml(&self) -> Value {
        const UNITS: &[&str] = &[
            "B", "KiB", "Ki", "MiB", "GiB", "KB", "k", "M", "G", " MB", "x",
        ];
        match self {
            Size::Bytes(n) => Value::from(*n),
            Size::Unit(n, u) => Value::String(format!("{n}{}", UNITS[*u as usize % UNITS.len()])),
        }
    }
}

/// A count: small, large or negative.
#[derive(Arbitrary, Debug)]
pub enum Count {
    Small(u8),
    Mid(u32),
    Big(u64),
    Neg(i8),
}

impl Yaml for Count {
    fn yaml(&self) -> Value {
        match self {
            Count::Small(n) => Value::from(*n),
            Count::Mid(n) => Value::from(*n),
            Count::Big(n) => Value::from(*n),
            Count::Neg(n) => Value::from(-(i64::from(*n).abs()) - 1),
        }
    }
}

/// A backend weight: an integer (v1alpha2+), a quantity (v1alpha1), or neither.
#[derive(Arbitrary, Debug)]
pub enum Weight {
    Int(u16),
    Zero,
    Neg(i16),
    Big(u64),
    /// Integer part (`None`: 0), fraction (leading zeros, digits), suffix.
    Quantity(Option<u32>, Option<(u8, u64)>, u8),
    Float(f64),
    Text(String),
}

impl Yaml for Weight {
    fn yaml(&self) -> Value {
        const SUFFIX: &[&str] = &["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Ei", "x"];
        match self {
            Weight::Int(n) => Value::from(*n),
            Weight::Zero => Value::from(0),
            Weight::Neg(n) => Value::from(*n),
            Weight::Big(n) => Value::from(*n),
            Weight::Quantity(n, frac, suffix) => {
                let mut s = n.unwrap_or(0).to_string();
                if let Some((zeros, digits)) = frac {
                    s.push('.');
                    s.push_str(&"0".repeat(*zeros as usize % 64));
                    s.push_str(&digits.to_string());
                }
                s.push_str(SUFFIX[*suffix as usize % SUFFIX.len()]);
                Value::String(s)
            }
            Weight::Float(f) => Value::from(*f),
            Weight::Text(s) => Value::String(s.clone()),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Access {
    Permissive,
    Enforce,
}

impl Yaml for Access {
    fn yaml(&self) -> Value {
        Value::String(match self {
            Access::Permissive => "permissive".into(),
            Access::Enforce => "enforce".into(),
        })
    }
}

#[derive(Arbitrary, Debug)]
pub enum ClientAuth {
    Require,
    Optional,
    None,
}

impl Yaml for ClientAuth {
    fn yaml(&self) -> Value {
        Value::String(match self {
            ClientAuth::Require => "require".into(),
            ClientAuth::Optional => "optional".into(),
            ClientAuth::None => "none".into(),
        })
    }
}

// === documents ===

/// `apiVersion` for a kind: one of `versions` or a version nobody supports.
fn api_version(group: &str, versions: &[&str], pick: u8) -> Value {
    let version = versions
        .get(pick as usize % (versions.len() + 1))
        .unwrap_or(&"v9");
    Value::String(format!("{group}/{version}"))
}

/// A mapping of the fields that are present, in order.
fn map<'a>(fields: impl IntoIterator<Item = (&'a str, Option<Value>)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(Value::String(k.to_string()), v);
        }
    }
    Value::Mapping(m)
}

fn opt<T: Yaml>(v: &Option<T>) -> Option<Value> {
    v.as_ref().map(Yaml::yaml)
}

/// Adds a field that does not belong (refused where the kind denies unknown fields).
fn with_extra(mut v: Value, extra: &Option<(Word, Leaf)>) -> Value {
    if let (Value::Mapping(m), Some((k, x))) = (&mut v, extra) {
        m.insert(k.yaml(), x.yaml());
    }
    v
}

#[derive(Arbitrary, Debug)]
pub struct Metadata {
    name: Option<F<Word>>,
    namespace: Option<F<Ns>>,
    annotations: Vec<(Annotation, F<Word>)>,
}

impl Yaml for Metadata {
    fn yaml(&self) -> Value {
        let annotations = (!self.annotations.is_empty()).then(|| {
            Value::Mapping(
                self.annotations
                    .iter()
                    .map(|(k, v)| (k.yaml(), v.yaml()))
                    .collect(),
            )
        });
        map([
            ("name", opt(&self.name)),
            ("namespace", opt(&self.namespace)),
            ("annotations", annotations),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Proxy {
    version: u8,
    metadata: Metadata,
    listen: Option<F<Addr>>,
    admin: Option<F<Addr>>,
    tls: Option<F<Tls>>,
    access: Option<F<Access>>,
    timeouts: Option<F<Timeouts>>,
    shutdown: Option<F<Shutdown>>,
    expose_backend: Option<F<bool>>,
    trust_domain: Option<F<Word>>,
    limits: Option<F<Limits>>,
    retries: Option<F<Retries>>,
    outlier_detection: Option<F<Outlier>>,
    services: Vec<(Svc, F<Service>)>,
    extra: Option<(Word, Leaf)>,
}

impl Yaml for Proxy {
    fn yaml(&self) -> Value {
        let services = Value::Mapping(
            self.services
                .iter()
                .map(|(k, v)| (k.yaml(), v.yaml()))
                .collect(),
        );
        let spec = with_extra(
            map([
                ("listen", opt(&self.listen)),
                ("admin", opt(&self.admin)),
                ("tls", opt(&self.tls)),
                ("access", opt(&self.access)),
                ("timeouts", opt(&self.timeouts)),
                ("shutdown", opt(&self.shutdown)),
                ("exposeBackend", opt(&self.expose_backend)),
                ("trustDomain", opt(&self.trust_domain)),
                ("limits", opt(&self.limits)),
                ("retries", opt(&self.retries)),
                ("outlierDetection", opt(&self.outlier_detection)),
                ("services", Some(services)),
            ]),
            &self.extra,
        );
        map([
            (
                "apiVersion",
                Some(api_version("splitproxy.dev", &["v1alpha1"], self.version)),
            ),
            ("kind", Some(Value::String("Proxy".into()))),
            ("metadata", Some(self.metadata.yaml())),
            ("spec", Some(spec)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Tls {
    cert: F<FileName>,
    key: F<FileName>,
    client_ca: Option<F<FileName>>,
    client_auth: Option<F<ClientAuth>>,
}

impl Yaml for Tls {
    fn yaml(&self) -> Value {
        map([
            ("cert", Some(self.cert.yaml())),
            ("key", Some(self.key.yaml())),
            ("clientCA", opt(&self.client_ca)),
            ("clientAuth", opt(&self.client_auth)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Timeouts {
    connect: Option<F<Dur>>,
    upstream: Option<F<Dur>>,
    client_header: Option<F<Dur>>,
    idle: Option<F<Dur>>,
}

impl Yaml for Timeouts {
    fn yaml(&self) -> Value {
        map([
            ("connect", opt(&self.connect)),
            ("upstream", opt(&self.upstream)),
            ("clientHeader", opt(&self.client_header)),
            ("idle", opt(&self.idle)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Shutdown {
    delay: Option<F<Dur>>,
    grace: Option<F<Dur>>,
}

impl Yaml for Shutdown {
    fn yaml(&self) -> Value {
        map([("delay", opt(&self.delay)), ("grace", opt(&self.grace))])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Limits {
    request_header_bytes: Option<F<Size>>,
    request_headers: Option<F<Count>>,
    request_body_bytes: Option<F<Size>>,
    connections: Option<F<Count>>,
    h2_max_concurrent_streams: Option<F<Count>>,
}

impl Yaml for Limits {
    fn yaml(&self) -> Value {
        map([
            ("requestHeaderBytes", opt(&self.request_header_bytes)),
            ("requestHeaders", opt(&self.request_headers)),
            ("requestBodyBytes", opt(&self.request_body_bytes)),
            ("connections", opt(&self.connections)),
            (
                "h2MaxConcurrentStreams",
                opt(&self.h2_max_concurrent_streams),
            ),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Retries {
    attempts: Option<F<Count>>,
}

impl Yaml for Retries {
    fn yaml(&self) -> Value {
        map([("attempts", opt(&self.attempts))])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Outlier {
    consecutive_failures: Option<F<Count>>,
    consecutive_5xx: Option<F<Count>>,
    base_ejection_time: Option<F<Dur>>,
    max_ejected_percent: Option<F<Count>>,
}

impl Yaml for Outlier {
    fn yaml(&self) -> Value {
        map([
            ("consecutiveFailures", opt(&self.consecutive_failures)),
            ("consecutive5xx", opt(&self.consecutive_5xx)),
            ("baseEjectionTime", opt(&self.base_ejection_time)),
            ("maxEjectedPercent", opt(&self.max_ejected_percent)),
        ])
    }
}

/// A `spec.services` entry: a list of endpoints, or a mapping with endpoints and TLS.
#[derive(Arbitrary, Debug)]
pub enum Service {
    List(Vec<F<Endpoint>>),
    Map {
        endpoints: Vec<F<Endpoint>>,
        tls: Option<F<UpstreamTls>>,
        extra: Option<(Word, Leaf)>,
    },
}

impl Yaml for Service {
    fn yaml(&self) -> Value {
        match self {
            Service::List(l) => l.yaml(),
            Service::Map {
                endpoints,
                tls,
                extra,
            } => with_extra(
                map([("endpoints", Some(endpoints.yaml())), ("tls", opt(tls))]),
                extra,
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct UpstreamTls {
    ca: F<FileName>,
    server_name: Option<F<Word>>,
    cert: Option<F<FileName>>,
    key: Option<F<FileName>>,
}

impl Yaml for UpstreamTls {
    fn yaml(&self) -> Value {
        map([
            ("ca", Some(self.ca.yaml())),
            ("serverName", opt(&self.server_name)),
            ("cert", opt(&self.cert)),
            ("key", opt(&self.key)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Split {
    version: u8,
    metadata: Metadata,
    service: F<Svc>,
    backends: F<Vec<Backend>>,
    matches: Option<Vec<KindRef>>,
    extra: Option<(Word, Leaf)>,
}

impl Yaml for Split {
    fn yaml(&self) -> Value {
        const VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
        let spec = with_extra(
            map([
                ("service", Some(self.service.yaml())),
                ("backends", Some(self.backends.yaml())),
                ("matches", opt(&self.matches)),
            ]),
            &self.extra,
        );
        map([
            (
                "apiVersion",
                Some(api_version("split.smi-spec.io", VERSIONS, self.version)),
            ),
            ("kind", Some(Value::String("TrafficSplit".into()))),
            ("metadata", Some(self.metadata.yaml())),
            ("spec", Some(spec)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Backend {
    service: F<Svc>,
    weight: F<Weight>,
    extra: Option<(Word, Leaf)>,
}

impl Yaml for Backend {
    fn yaml(&self) -> Value {
        with_extra(
            map([
                ("service", Some(self.service.yaml())),
                ("weight", Some(self.weight.yaml())),
            ]),
            &self.extra,
        )
    }
}

/// A reference by kind and name (`spec.matches`, `rules`); kind `HTTPRouteGroup` unless
/// another is given.
#[derive(Arbitrary, Debug)]
pub struct KindRef {
    kind: Option<Word>,
    name: F<Word>,
    matches: Option<Vec<F<Word>>>,
}

impl Yaml for KindRef {
    fn yaml(&self) -> Value {
        let kind = self.kind.map_or("HTTPRouteGroup", |k| k.as_str());
        map([
            ("kind", Some(Value::String(kind.into()))),
            ("name", Some(self.name.yaml())),
            ("matches", opt(&self.matches)),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Group {
    version: u8,
    metadata: Metadata,
    /// v1alpha1 keeps `matches` at the top level.
    top_level: bool,
    matches: Vec<HttpMatch>,
}

impl Yaml for Group {
    fn yaml(&self) -> Value {
        const VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
        let matches = Some(self.matches.yaml());
        let (spec, top) = if self.top_level {
            (None, matches)
        } else {
            (Some(map([("matches", matches)])), None)
        };
        map([
            (
                "apiVersion",
                Some(api_version("specs.smi-spec.io", VERSIONS, self.version)),
            ),
            ("kind", Some(Value::String("HTTPRouteGroup".into()))),
            ("metadata", Some(self.metadata.yaml())),
            ("spec", spec),
            ("matches", top),
        ])
    }
}

/// `headers` entries: name and regex.
type HeaderPairs = Vec<(Word, F<Regex>)>;

#[derive(Arbitrary, Debug)]
pub struct HttpMatch {
    name: F<Word>,
    path_regex: Option<F<Regex>>,
    methods: Option<Vec<F<Method>>>,
    /// As a map, or as a list of one-entry maps.
    headers: Option<(bool, HeaderPairs)>,
}

impl Yaml for HttpMatch {
    fn yaml(&self) -> Value {
        let headers = self.headers.as_ref().map(|(as_list, pairs)| {
            let entry = |(k, v): &(Word, F<Regex>)| (k.yaml(), v.yaml());
            if *as_list {
                Value::Sequence(
                    pairs
                        .iter()
                        .map(|p| Value::Mapping(std::iter::once(entry(p)).collect()))
                        .collect(),
                )
            } else {
                Value::Mapping(pairs.iter().map(entry).collect())
            }
        });
        map([
            ("name", Some(self.name.yaml())),
            ("pathRegex", opt(&self.path_regex)),
            ("methods", opt(&self.methods)),
            ("headers", headers),
        ])
    }
}

#[derive(Arbitrary, Debug)]
pub struct Target {
    version: u8,
    metadata: Metadata,
    /// v1alpha1 keeps `destination`, `sources` and `specs` at the top level.
    top_level: bool,
    destination: Option<Identity>,
    sources: Vec<Identity>,
    rules: Vec<KindRef>,
}

impl Yaml for Target {
    fn yaml(&self) -> Value {
        const VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3"];
        let (destination, sources, rules) = (
            opt(&self.destination),
            Some(self.sources.yaml()),
            Some(self.rules.yaml()),
        );
        let mut fields = vec![
            (
                "apiVersion",
                Some(api_version("access.smi-spec.io", VERSIONS, self.version)),
            ),
            ("kind", Some(Value::String("TrafficTarget".into()))),
            ("metadata", Some(self.metadata.yaml())),
        ];
        if self.top_level {
            fields.extend([
                ("destination", destination),
                ("sources", sources),
                ("specs", rules),
            ]);
        } else {
            let spec = map([
                ("destination", destination),
                ("sources", sources),
                ("rules", rules),
            ]);
            fields.push(("spec", Some(spec)));
        }
        map(fields)
    }
}

#[derive(Arbitrary, Debug)]
pub struct Identity {
    kind: Option<Word>,
    name: F<Word>,
    namespace: Option<F<Ns>>,
}

impl Yaml for Identity {
    fn yaml(&self) -> Value {
        let kind = self.kind.map_or("ServiceAccount", |k| k.as_str());
        map([
            ("kind", Some(Value::String(kind.into()))),
            ("name", Some(self.name.yaml())),
            ("namespace", opt(&self.namespace)),
        ])
    }
}

// === fixtures with edits ===

/// The files of tests/fixtures, compiled in.
const FIXTURES: &[&str] = &[
    include_str!("../../tests/fixtures/design-example.yaml"),
    include_str!("../../tests/fixtures/flagger-v1alpha2.yaml"),
    include_str!("../../tests/fixtures/linkerd-v1alpha1.yaml"),
    include_str!("../../tests/fixtures/osm-v1alpha2.yaml"),
    include_str!("../../tests/fixtures/smi-v1alpha1.yaml"),
    include_str!("../../tests/fixtures/smi-v1alpha3.yaml"),
    include_str!("../../tests/fixtures/smi-v1alpha4.yaml"),
    include_str!("../../tests/fixtures/with-deployment.yaml"),
];

/// The fixtures' documents, parsed once.
fn fixture_documents() -> &'static [Vec<Value>] {
    static DOCS: OnceLock<Vec<Vec<Value>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        FIXTURES
            .iter()
            .map(|text| {
                serde_yaml::Deserializer::from_str(text)
                    .filter_map(|de| serde::Deserialize::deserialize(de).ok())
                    .collect()
            })
            .collect()
    })
}

/// One fixture's documents with edits applied.
#[derive(Arbitrary, Debug)]
pub struct Fixture {
    index: u8,
    edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
pub struct Edit {
    doc: u8,
    path: Vec<Key>,
    op: Op,
}

#[derive(Arbitrary, Debug)]
pub enum Key {
    Field(Word),
    Index(u8),
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Set(Leaf),
    Remove,
}

impl Fixture {
    fn values(&self) -> Vec<Value> {
        let all = fixture_documents();
        let mut docs = all[self.index as usize % all.len()].clone();
        if docs.is_empty() {
            return docs;
        }
        let count = docs.len();
        for edit in &self.edits {
            let doc = &mut docs[edit.doc as usize % count];
            edit.apply(doc);
        }
        docs
    }
}

impl Edit {
    /// Walk `path` as far as it exists, then set or remove the last key there.
    fn apply(&self, doc: &mut Value) {
        let Some((last, walk)) = self.path.split_last() else {
            if let Op::Set(v) = &self.op {
                *doc = v.yaml();
            }
            return;
        };
        let mut node = doc;
        for key in walk {
            let next = match (key, node) {
                (Key::Field(w), Value::Mapping(m)) => m.get_mut(w.as_str()),
                (Key::Index(i), Value::Sequence(s)) if !s.is_empty() => {
                    let n = s.len();
                    s.get_mut(*i as usize % n)
                }
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return,
            }
        }
        match (last, node, &self.op) {
            (Key::Field(w), Value::Mapping(m), Op::Set(v)) => {
                m.insert(w.yaml(), v.yaml());
            }
            (Key::Field(w), Value::Mapping(m), Op::Remove) => {
                m.remove(w.as_str());
            }
            (Key::Index(i), Value::Sequence(s), op) if !s.is_empty() => {
                let i = *i as usize % s.len();
                match op {
                    Op::Set(v) => s[i] = v.yaml(),
                    Op::Remove => {
                        s.remove(i);
                    }
                }
            }
            _ => {}
        }
    }
}
