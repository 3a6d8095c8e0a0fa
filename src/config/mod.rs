//! Configuration: one YAML file or a folder of them, each multi-document.
//!
//! ```text
//! files -> YAML documents -> (apiVersion, kind) -> raw serde types (config::raw)
//!       -> validate: defaults, values, cross-references -> Config (this module's types)
//! ```
//!
//! Every error carries the file, the document (numbered from 1 within its file), the
//! object, the field path and the reason; loading goes on after an error so that
//! `validate` can print all of them at once. Nothing downstream sees an `Option` that
//! validation has already decided.

pub mod raw;
pub mod values;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub use values::Endpoint;

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const ANNOTATION_PREFIX: &str = "splitproxy.dev/";
/// Annotations this version understands; any other `splitproxy.dev/` key is a typo.
pub const KNOWN_ANNOTATIONS: &[&str] = &[
    "splitproxy.dev/selection",
    "splitproxy.dev/sticky-header",
    "splitproxy.dev/sticky-cookie",
    "splitproxy.dev/service-account",
];

// === errors ===

/// One problem in the configuration, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based index of the document within its file.
    pub document: Option<usize>,
    /// `(kind, name)` of the object when known.
    pub object: Option<(String, String)>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some((kind, name)) = &self.object {
            write!(f, " ({kind} {name})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Where an object came from: file, document index and object name, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub document: usize,
    pub kind: &'static str,
    pub name: String,
}

impl Origin {
    fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError {
            file: self.file.to_path_buf(),
            document: Some(self.document),
            object: Some((self.kind.to_string(), self.name.clone())),
            field: (!field.is_empty()).then_some(field),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)
    }
}

// === validated types ===

/// A whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path given on the command line (file or folder).
    pub path: PathBuf,
    /// Every file read: the YAML files, then the TLS files they name.
    pub files: Vec<PathBuf>,
    /// Hash of the contents of `files`: equal fingerprints mean nothing changed.
    pub fingerprint: u64,
    pub proxy: Proxy,
    pub splits: Vec<TrafficSplit>,
    pub route_groups: Vec<HttpRouteGroup>,
    pub targets: Vec<TrafficTarget>,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub origin: Origin,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<TlsSettings>,
    pub access: AccessMode,
    pub timeouts: Timeouts,
    pub shutdown: ShutdownSettings,
    pub expose_backend: bool,
    pub services: BTreeMap<String, Service>,
}

/// A backend service: where it runs, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub endpoints: Vec<Endpoint>,
    /// Connect with TLS (HTTPS upstream) when set.
    pub tls: Option<UpstreamTls>,
}

/// TLS origination to a backend: server verification against `ca`, SNI `server_name`
/// (default: the endpoint's host), optional client certificate (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub server_name: Option<String>,
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Require,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    Permissive,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream: Duration,
    pub client_header: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            upstream: Duration::from_secs(30),
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSettings {
    pub delay: Duration,
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            delay: Duration::ZERO,
            grace: Duration::from_secs(30),
        }
    }
}

/// How a split picks a backend (`splitproxy.dev/selection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Independent weighted random draw per request (the default).
    Random,
    /// Exact interleaved order: every window of sum(weights) picks holds each weight.
    Deterministic,
    /// The backend is a function of a request key: rendezvous hashing on the key.
    Sticky(StickyKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `splitproxy.dev/sticky-header`: lower-case header name.
    Header(String),
    /// `splitproxy.dev/sticky-cookie`: cookie name; set on responses to requests without it.
    Cookie(String),
}

impl Selection {
    pub fn name(&self) -> &'static str {
        match self {
            Selection::Random => "random",
            Selection::Deterministic => "deterministic",
            Selection::Sticky(_) => "sticky",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrafficSplit {
    pub origin: Origin,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    /// `spec.service` as written.
    pub service: String,
    /// The lower-case host names this split answers for (every Kubernetes form).
    pub hosts: Vec<String>,
    pub backends: Vec<SplitBackend>,
    /// Names of the HTTPRouteGroups in `spec.matches` (v1alpha3+); empty: all requests.
    pub matches: Vec<String>,
    pub selection: Selection,
    /// The destination ServiceAccount for `access: enforce`.
    pub service_account: String,
    /// Where traffic goes when every weight is 0: the root service, if `spec.services`
    /// defines it (as Linkerd does).
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBackend {
    pub service: String,
    /// Relative weight; v1alpha1 quantities are in milli-units.
    pub weight: u64,
}

#[derive(Debug, Clone)]
pub struct HttpRouteGroup {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    pub matches: Vec<HttpMatch>,
}

#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub name: String,
    /// Anchored at the start.
    pub path: Option<Regex>,
    /// Upper-case; `None` = any method (`*` or absent).
    pub methods: Option<Vec<http::Method>>,
    /// Header name (lower-case) and a regex that must match the whole value.
    pub headers: Vec<(http::HeaderName, Regex)>,
}

#[derive(Debug, Clone)]
pub struct TrafficTarget {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    /// (namespace, ServiceAccount)
    pub destination: (String, String),
    pub sources: Vec<(String, String)>,
    /// (HTTPRouteGroup name, match names; empty = all of the group)
    pub rules: Vec<(String, Vec<String>)>,
}

// === host names ===

/// Every host name a root service answers to, lower-case: `name`, `name.ns`, `name.ns.svc`,
/// `name.ns.svc.cluster`, `name.ns.svc.cluster.local`. A `spec.service` written in one of
/// the longer forms yields the same set; any other dotted name only itself.
pub fn host_forms(service: &str, namespace: &str) -> Vec<String> {
    let s = service.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = s.split('.').collect();
    let kube = |name: &str, ns: &str| {
        vec![
            name.to_string(),
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster"),
            format!("{name}.{ns}.svc.cluster.local"),
        ]
    };
    match labels.as_slice() {
        [name] => kube(name, &namespace.to_ascii_lowercase()),
        [name, ns]
        | [name, ns, "svc"]
        | [name, ns, "svc", "cluster"]
        | [name, ns, "svc", "cluster", "local"] => kube(name, ns),
        _ => vec![s],
    }
}

// === loading ===

/// Load and validate the configuration at `path` (a file or a folder of `*.yaml`/`*.yml`).
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut loader = Loader::default();
    let files = match config_files(path) {
        Ok(files) => files,
        Err(e) => return Err(vec![*e]),
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                file.hash(&mut hasher);
                text.hash(&mut hasher);
                loader.parse_file(Arc::from(file.as_path()), &text);
            }
            Err(e) => loader
                .errors
                .push(file_error(file, format!("cannot read: {e}"))),
        }
    }
    let mut config = loader.finish(path)?;
    // TLS files are part of the configuration: a rotated certificate is a change.
    if let Some(tls) = &config.proxy.tls {
        for file in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(bytes) = std::fs::read(file) {
                file.hash(&mut hasher);
                bytes.hash(&mut hasher);
            }
            config.files.push(file.clone());
        }
    }
    let upstream_files: Vec<PathBuf> = config
        .proxy
        .services
        .values()
        .filter_map(|s| s.tls.as_ref())
        .flat_map(|t| {
            std::iter::once(t.ca.clone())
                .chain(t.client.iter().flat_map(|(c, k)| [c.clone(), k.clone()]))
        })
        .collect();
    for file in upstream_files {
        if let Ok(bytes) = std::fs::read(&file) {
            file.hash(&mut hasher);
            bytes.hash(&mut hasher);
        }
        config.files.push(file);
    }
    config.fingerprint = hasher.finish();
    Ok(config)
}

/// `[3]` for a sequence path `3`, as our field paths write list indexes.
fn seq_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        format!("[{p}]")
    }
}

fn file_error(file: &Path, reason: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        document: None,
        object: None,
        field: None,
        reason,
    }
}

/// The YAML files of a config path: the file itself, or a folder's `*.yaml`/`*.yml`
/// (hidden entries such as a ConfigMap's `..data` skipped), sorted by name.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, Box<ConfigError>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Box::new(file_error(path, format!("cannot read: {e}"))))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Box::new(file_error(path, format!("cannot list folder: {e}"))))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Box::new(file_error(
            path,
            "folder has no *.yaml or *.yml files".into(),
        )));
    }
    Ok(files)
}

/// A recognised document, deserialized into its raw type.
enum Doc {
    Proxy(Origin, raw::ProxyDoc),
    Split(Origin, String, raw::TrafficSplitDoc),
    Routes(Origin, raw::HttpRouteGroupDoc),
    Target(Origin, raw::TrafficTargetDoc),
}

#[derive(Default)]
struct Loader {
    docs: Vec<Doc>,
    errors: Vec<ConfigError>,
}

const SPLIT_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
const SPECS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
const ACCESS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3"];

impl Loader {
    fn parse_file(&mut self, file: Arc<Path>, text: &str) {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = match <Value as serde::Deserialize>::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(ConfigError {
                        file: file.to_path_buf(),
                        document: Some(document),
                        object: None,
                        field: None,
                        reason: format!("invalid YAML: {e}"),
                    });
                    // the rest of the stream cannot be trusted after a syntax error
                    return;
                }
            };
            self.classify(&file, document, value);
        }
    }

    fn classify(&mut self, file: &Arc<Path>, document: usize, value: Value) {
        let skip = |why: String| {
            tracing::warn!("{}: document {document}: skipped: {why}", file.display());
        };
        if value.is_null() {
            return; // an empty document, e.g. a trailing `---`
        }
        let Value::Mapping(map) = &value else {
            skip("not a mapping with apiVersion and kind".into());
            return;
        };
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (group, version) = api_version
            .split_once('/')
            .unwrap_or(("", api_version.as_str()));
        let (kind_static, versions): (&'static str, &[&str]) = match (group, kind.as_str()) {
            ("splitproxy.dev", "Proxy") => ("Proxy", &["v1alpha1"]),
            ("split.smi-spec.io", "TrafficSplit") => ("TrafficSplit", SPLIT_VERSIONS),
            ("specs.smi-spec.io", "HTTPRouteGroup") => ("HTTPRouteGroup", SPECS_VERSIONS),
            ("access.smi-spec.io", "TrafficTarget") => ("TrafficTarget", ACCESS_VERSIONS),
            _ => {
                let what = if kind.is_empty() {
                    "a document without kind".to_string()
                } else {
                    format!("kind {kind:?}")
                };
                let api = if api_version.is_empty() {
                    String::new()
                } else {
                    format!(" ({api_version})")
                };
                skip(format!("{what}{api} is not read by splitproxy"));
                return;
            }
        };
        let origin = Origin {
            file: file.clone(),
            document,
            kind: kind_static,
            name,
        };
        if !versions.contains(&version) {
            self.errors.push(origin.error(
                "apiVersion",
                format!(
                        "unsupported version {api_version:?} (supported: {})",
                        versions
                            .iter()
                            .map(|v| format!("{group}/{v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
            ));
            return;
        }
        let doc = match kind_static {
            "Proxy" => self
                .deserialize(&origin, value)
                .map(|d| Doc::Proxy(origin, d)),
            "TrafficSplit" => self
                .deserialize(&origin, value)
                .map(|d| Doc::Split(origin, version.to_string(), d)),
            "HTTPRouteGroup" => self
                .deserialize(&origin, value)
                .map(|d| Doc::Routes(origin, d)),
            _ => self
                .deserialize(&origin, value)
                .map(|d| Doc::Target(origin, d)),
        };
        if let Some(doc) = doc {
            self.docs.push(doc);
        }
    }

    fn deserialize<T: DeserializeOwned>(&mut self, origin: &Origin, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                self.errors
                    .push(origin.error(field, e.into_inner().to_string()));
                None
            }
        }
    }

    fn finish(mut self, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let docs = std::mem::take(&mut self.docs);
        let mut proxy_doc = None;
        let mut split_docs = Vec::new();
        let mut group_docs = Vec::new();
        let mut target_docs = Vec::new();
        for doc in docs {
            match doc {
                Doc::Proxy(origin, d) => {
                    if let Some((first, _)) = &proxy_doc {
                        let first: &Origin = first;
                        self.errors.push(
                            origin.error(
                                "",
                                format!("a second Proxy document; the first is {first}"),
                            ),
                        );
                    } else {
                        proxy_doc = Some((origin, d));
                    }
                }
                Doc::Split(o, v, d) => split_docs.push((o, v, d)),
                Doc::Routes(o, d) => group_docs.push((o, d)),
                Doc::Target(o, d) => target_docs.push((o, d)),
            }
        }
        let proxy = match proxy_doc {
            Some((origin, doc)) => self.proxy(origin, doc),
            None => {
                self.errors.push(file_error(
                    path,
                    "no Proxy document (apiVersion: splitproxy.dev/v1alpha1, kind: Proxy) found"
                        .into(),
                ));
                None
            }
        };
        let route_groups: Vec<HttpRouteGroup> = group_docs
            .into_iter()
            .filter_map(|(o, d)| self.route_group(o, d))
            .collect();
        let mut splits = Vec::new();
        for (origin, version, doc) in split_docs {
            if let Some(split) = self.split(origin, &version, doc, proxy.as_ref(), &route_groups) {
                splits.push(split);
            }
        }
        self.check_duplicate_roots(&splits);
        let targets = target_docs
            .into_iter()
            .filter_map(|(o, d)| self.target(o, d, &route_groups))
            .collect();
        match proxy {
            Some(proxy) if self.errors.is_empty() => Ok(Config {
                path: path.to_path_buf(),
                files: Vec::new(),
                fingerprint: 0,
                proxy,
                splits,
                route_groups,
                targets,
            }),
            _ => Err(self.errors),
        }
    }

    fn proxy(&mut self, origin: Origin, doc: raw::ProxyDoc) -> Option<Proxy> {
        let before = self.errors.len();
        let spec = doc.spec;
        let dir = origin
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut addr = |field: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            values::parse_listen(&text)
                .map_err(|e| self.errors.push(origin.error(field, e)))
                .ok()
        };
        let listen = addr("spec.listen", spec.listen, DEFAULT_LISTEN);
        let admin = addr("spec.admin", spec.admin, DEFAULT_ADMIN);

        let tls = spec.tls.and_then(|t| {
            let resolve = |p: &str| dir.join(p);
            let mut file = |field: &str, p: &str| {
                let path = resolve(p);
                match std::fs::metadata(&path) {
                    Ok(_) => Some(path),
                    Err(e) => {
                        self.errors.push(origin.error(field, format!("cannot read {}: {e}", path.display())));
                        None
                    }
                }
            };
            let cert = file("spec.tls.cert", &t.cert);
            let key = file("spec.tls.key", &t.key);
            let client_ca = match &t.client_ca {
                Some(p) => Some(file("spec.tls.clientCA", p)?),
                None => None,
            };
            let client_auth = match t.client_auth.as_deref() {
                None if client_ca.is_some() => ClientAuth::Require,
                None => ClientAuth::None,
                Some("require") => ClientAuth::Require,
                Some("optional") => ClientAuth::Optional,
                Some("none") => ClientAuth::None,
                Some(other) => {
                    self.errors.push(origin.error(
                        "spec.tls.clientAuth",
                        format!("must be one of require, optional, none; got {other:?}"),
                    ));
                    return None;
                }
            };
            if client_auth != ClientAuth::None && client_ca.is_none() {
                self.errors.push(origin.error(
                    "spec.tls.clientCA",
                    "required when clientAuth is require or optional (the CA that signs client certificates)",
                ));
                return None;
            }
            Some(TlsSettings { cert: cert?, key: key?, client_ca, client_auth })
        });
        if tls.is_none() && self.errors.len() == before {
            tracing::warn!("{origin} (Proxy {}): no spec.tls block: serving plain HTTP without TLS or client authentication", origin.name);
        }

        let access = match spec.access.as_deref() {
            None | Some("permissive") => AccessMode::Permissive,
            Some("enforce") => AccessMode::Enforce,
            Some(other) => {
                self.errors.push(origin.error(
                    "spec.access",
                    format!("must be permissive or enforce, got {other:?}"),
                ));
                AccessMode::Permissive
            }
        };

        let mut duration =
            |field: &str, value: Option<String>, default: Duration, positive: bool| match value {
                None => default,
                Some(text) => match values::parse_duration(&text) {
                    Ok(d) if positive && d.is_zero() => {
                        self.errors.push(
                            origin.error(field, format!("must be greater than 0, got {text:?}")),
                        );
                        default
                    }
                    Ok(d) => d,
                    Err(e) => {
                        self.errors.push(origin.error(field, e));
                        default
                    }
                },
            };
        let t = spec.timeouts.unwrap_or_default();
        let d = Timeouts::default();
        let timeouts = Timeouts {
            connect: duration("spec.timeouts.connect", t.connect, d.connect, true),
            upstream: duration("spec.timeouts.upstream", t.upstream, d.upstream, true),
            client_header: duration(
                "spec.timeouts.clientHeader",
                t.client_header,
                d.client_header,
                true,
            ),
            idle: duration("spec.timeouts.idle", t.idle, d.idle, true),
        };
        let s = spec.shutdown.unwrap_or_default();
        let d = ShutdownSettings::default();
        let shutdown = ShutdownSettings {
            delay: duration("spec.shutdown.delay", s.delay, d.delay, false),
            grace: duration("spec.shutdown.grace", s.grace, d.grace, false),
        };

        let mut services = BTreeMap::new();
        for (name, value) in spec.services {
            let field = format!("spec.services.{name}");
            // a plain list of endpoints, or a mapping with endpoints and upstream TLS
            let (endpoints, tls_raw, list_field) = if value.is_sequence() {
                match serde_path_to_error::deserialize::<_, Vec<String>>(value) {
                    Ok(list) => (list, None, field.clone()),
                    Err(e) => {
                        self.errors.push(origin.error(
                            format!("{field}{}", seq_path(e.path())),
                            e.into_inner().to_string(),
                        ));
                        continue;
                    }
                }
            } else if value.is_mapping() {
                match serde_path_to_error::deserialize::<_, raw::Service>(value) {
                    Ok(svc) => (svc.endpoints, svc.tls, format!("{field}.endpoints")),
                    Err(e) => {
                        self.errors.push(
                            origin
                                .error(format!("{field}.{}", e.path()), e.into_inner().to_string()),
                        );
                        continue;
                    }
                }
            } else {
                self.errors.push(origin.error(
                    &field,
                    "expected a list of host:port endpoints, or a mapping with endpoints and tls",
                ));
                continue;
            };
            let tls = tls_raw.and_then(|t| {
                let mut file = |f: &str, p: &str| {
                    let path = dir.join(p);
                    match std::fs::metadata(&path) {
                        Ok(_) => Some(path),
                        Err(e) => {
                            self.errors.push(origin.error(
                                format!("{field}.tls.{f}"),
                                format!("cannot read {}: {e}", path.display()),
                            ));
                            None
                        }
                    }
                };
                let ca = file("ca", &t.ca)?;
                let client = match (t.cert, t.key) {
                    (Some(c), Some(k)) => Some((file("cert", &c)?, file("key", &k)?)),
                    (None, None) => None,
                    _ => {
                        self.errors.push(origin.error(
                            format!("{field}.tls"),
                            "cert and key go together (client certificate for mTLS origination)",
                        ));
                        return None;
                    }
                };
                Some(UpstreamTls {
                    ca,
                    server_name: t.server_name,
                    client,
                })
            });
            if endpoints.is_empty() {
                self.errors
                    .push(origin.error(&field, "must list at least one endpoint (host:port)"));
                continue;
            }
            let mut parsed = Vec::with_capacity(endpoints.len());
            for (i, text) in endpoints.iter().enumerate() {
                match values::parse_endpoint(text) {
                    Ok(e) => parsed.push(e),
                    Err(e) => self
                        .errors
                        .push(origin.error(format!("{list_field}[{i}]"), e)),
                }
            }
            services.insert(
                name,
                Service {
                    endpoints: parsed,
                    tls,
                },
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(Proxy {
            origin,
            listen: listen?,
            admin: admin?,
            tls,
            access,
            timeouts,
            shutdown,
            expose_backend: spec.expose_backend.unwrap_or(false),
            services,
        })
    }

    fn split(
        &mut self,
        mut origin: Origin,
        version: &str,
        doc: raw::TrafficSplitDoc,
        proxy: Option<&Proxy>,
        groups: &[HttpRouteGroup],
    ) -> Option<TrafficSplit> {
        let before = self.errors.len();
        let meta = doc.metadata;
        let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
            origin.name = "(unnamed)".into();
            self.errors.push(origin.error("metadata.name", "required"));
            return None;
        };
        let namespace = meta
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let spec = doc.spec;
        if spec.service.trim().is_empty() {
            self.errors
                .push(origin.error("spec.service", "must name the root service"));
        }
        if spec.backends.is_empty() {
            self.errors
                .push(origin.error("spec.backends", "must list at least one backend"));
        }
        let mut backends: Vec<SplitBackend> = Vec::with_capacity(spec.backends.len());
        for (i, b) in spec.backends.into_iter().enumerate() {
            let field = format!("spec.backends[{i}]");
            if let Some(first) = backends.iter().position(|x| x.service == b.service) {
                self.errors.push(origin.error(
                    format!("{field}.service"),
                    format!(
                        "{:?} is listed twice (first at spec.backends[{first}])",
                        b.service
                    ),
                ));
                continue;
            }
            if b.service.is_empty() {
                self.errors
                    .push(origin.error(format!("{field}.service"), "must name a service"));
                continue;
            }
            if let Some(proxy) = proxy {
                if !proxy.services.contains_key(&b.service) {
                    self.errors.push(origin.error(
                        format!("{field}.service"),
                        format!(
                            "unknown service {:?}: not defined in spec.services of the Proxy document ({})",
                            b.service, proxy.origin
                        ),
                    ));
                }
            }
            match parse_weight(version, &b.weight) {
                Ok(weight) => backends.push(SplitBackend {
                    service: b.service,
                    weight,
                }),
                Err(e) => self.errors.push(origin.error(format!("{field}.weight"), e)),
            }
        }
        let mut matches = Vec::new();
        for (i, m) in spec.matches.into_iter().enumerate() {
            if m.kind != "HTTPRouteGroup" {
                self.errors.push(origin.error(
                    format!("spec.matches[{i}].kind"),
                    format!("only HTTPRouteGroup is supported, got {:?}", m.kind),
                ));
            } else if !groups
                .iter()
                .any(|g| g.name == m.name && g.namespace == namespace)
            {
                self.errors.push(origin.error(
                    format!("spec.matches[{i}].name"),
                    format!("no HTTPRouteGroup {:?} in namespace {namespace:?}", m.name),
                ));
            } else {
                matches.push(m.name);
            }
        }
        let mut policy: Option<(&str, String)> = None;
        let mut sticky_header: Option<String> = None;
        let mut sticky_cookie: Option<String> = None;
        let mut service_account = host_forms(&spec.service, &namespace)[0].clone();
        for (key, value) in &meta.annotations {
            if !key.starts_with(ANNOTATION_PREFIX) {
                continue;
            }
            let field = format!("metadata.annotations.{key}");
            match key.as_str() {
                "splitproxy.dev/selection" => match value.as_str() {
                    "random" | "deterministic" | "sticky" => policy = Some((value.as_str(), field)),
                    other => self.errors.push(origin.error(
                        field,
                        format!("unknown selection policy {other:?} (known: random, deterministic, sticky)"),
                    )),
                },
                "splitproxy.dev/sticky-header" => match http::HeaderName::from_bytes(value.to_ascii_lowercase().as_bytes()) {
                    Ok(_) => sticky_header = Some(value.to_ascii_lowercase()),
                    Err(_) => self.errors.push(origin.error(field, format!("not a valid header name: {value:?}"))),
                },
                "splitproxy.dev/sticky-cookie" => {
                    let valid = !value.is_empty()
                        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if valid {
                        sticky_cookie = Some(value.clone());
                    } else {
                        self.errors.push(origin.error(field, format!("not a valid cookie name: {value:?}")));
                    }
                }
                "splitproxy.dev/service-account" => service_account = value.clone(),
                _ => self.errors.push(origin.error(
                    field,
                    format!(
                        "unknown splitproxy annotation (known: {})",
                        KNOWN_ANNOTATIONS.join(", ")
                    ),
                )),
            }
        }
        let selection = match (
            policy.as_ref().map(|(p, _)| *p),
            sticky_header,
            sticky_cookie,
        ) {
            (Some("sticky"), Some(h), None) => Selection::Sticky(StickyKey::Header(h)),
            (Some("sticky"), None, Some(c)) => Selection::Sticky(StickyKey::Cookie(c)),
            (Some("sticky"), _, _) => {
                let field = policy.map(|(_, f)| f).unwrap_or_default();
                self.errors.push(origin.error(
                    field,
                    "sticky needs exactly one of the annotations splitproxy.dev/sticky-header and splitproxy.dev/sticky-cookie",
                ));
                Selection::Random
            }
            (p, h, c) if h.is_some() || c.is_some() => {
                let which = if h.is_some() {
                    "sticky-header"
                } else {
                    "sticky-cookie"
                };
                self.errors.push(origin.error(
                    format!("metadata.annotations.splitproxy.dev/{which}"),
                    format!(
                        "only used with splitproxy.dev/selection: sticky (selection is {})",
                        p.unwrap_or("random")
                    ),
                ));
                Selection::Random
            }
            (Some("deterministic"), _, _) => {
                let weights: Vec<u64> = backends.iter().map(|b| b.weight).collect();
                let len = crate::split::schedule_len(&weights);
                if len > crate::split::MAX_SCHEDULE {
                    self.errors.push(origin.error(
                        "spec.backends",
                        format!(
                            "deterministic selection needs the weights, divided by their greatest common divisor, to sum to at most {}; they sum to {len}",
                            crate::split::MAX_SCHEDULE
                        ),
                    ));
                }
                Selection::Deterministic
            }
            _ => Selection::Random,
        };
        if self.errors.len() != before {
            return None;
        }
        let hosts = host_forms(&spec.service, &namespace);
        let fallback = proxy.and_then(|p| {
            [spec.service.as_str(), hosts[0].as_str()]
                .into_iter()
                .find(|s| p.services.contains_key(*s))
                .map(str::to_string)
        });
        origin.name = name.clone();
        Some(TrafficSplit {
            origin,
            api_version: format!("split.smi-spec.io/{version}"),
            name,
            namespace,
            service: spec.service,
            hosts,
            backends,
            matches,
            selection,
            service_account,
            fallback,
        })
    }

    /// Two splits may share a root service only when they select different requests
    /// (`spec.matches`); two catch-all splits for one host would make the choice arbitrary.
    fn check_duplicate_roots(&mut self, splits: &[TrafficSplit]) {
        let mut seen: HashMap<&str, &TrafficSplit> = HashMap::new();
        for split in splits.iter().filter(|s| s.matches.is_empty()) {
            for host in &split.hosts {
                if let Some(first) = seen.get(host.as_str()) {
                    self.errors.push(split.origin.error(
                        "spec.service",
                        format!(
                            "root service {:?} is already split by TrafficSplit {} ({}); give one of them spec.matches or remove it",
                            split.service, first.name, first.origin
                        ),
                    ));
                    break;
                }
            }
            for host in &split.hosts {
                seen.entry(host.as_str()).or_insert(split);
            }
        }
    }

    fn route_group(
        &mut self,
        mut origin: Origin,
        doc: raw::HttpRouteGroupDoc,
    ) -> Option<HttpRouteGroup> {
        let before = self.errors.len();
        let Some(name) = doc.metadata.name.filter(|n| !n.is_empty()) else {
            origin.name = "(unnamed)".into();
            self.errors.push(origin.error("metadata.name", "required"));
            return None;
        };
        let namespace = doc
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let (prefix, raw_matches) = match (doc.spec, doc.matches) {
            (Some(spec), _) => ("spec.matches", spec.matches),
            (None, Some(m)) => ("matches", m),
            (None, None) => ("spec.matches", Vec::new()),
        };
        let mut matches = Vec::with_capacity(raw_matches.len());
        for (i, m) in raw_matches.into_iter().enumerate() {
            let field = format!("{prefix}[{i}]");
            let path = m.path_regex.as_deref().and_then(|re| {
                Regex::new(&format!("^(?:{re})"))
                    .map_err(|e| {
                        self.errors.push(
                            origin
                                .error(format!("{field}.pathRegex"), format!("invalid regex: {e}")),
                        )
                    })
                    .ok()
            });
            let methods = match m.methods {
                None => None,
                Some(list) if list.iter().any(|x| x == "*") => None,
                Some(list) => {
                    let mut parsed = Vec::with_capacity(list.len());
                    for (j, method) in list.iter().enumerate() {
                        match http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                            Ok(m) => parsed.push(m),
                            Err(_) => self.errors.push(origin.error(
                                format!("{field}.methods[{j}]"),
                                format!("not an HTTP method: {method:?}"),
                            )),
                        }
                    }
                    Some(parsed)
                }
            };
            let mut headers = Vec::new();
            for (key, re) in m.headers.map(raw::Headers::into_pairs).unwrap_or_default() {
                let hfield = format!("{field}.headers.{key}");
                let name = match http::HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        self.errors
                            .push(origin.error(hfield, "not a valid header name"));
                        continue;
                    }
                };
                match Regex::new(&format!("^(?:{re})$")) {
                    Ok(r) => headers.push((name, r)),
                    Err(e) => self
                        .errors
                        .push(origin.error(hfield, format!("invalid regex: {e}"))),
                }
            }
            matches.push(HttpMatch {
                name: m.name,
                path,
                methods,
                headers,
            });
        }
        origin.name = name.clone();
        (self.errors.len() == before).then_some(HttpRouteGroup {
            origin,
            name,
            namespace,
            matches,
        })
    }

    fn target(
        &mut self,
        mut origin: Origin,
        doc: raw::TrafficTargetDoc,
        groups: &[HttpRouteGroup],
    ) -> Option<TrafficTarget> {
        let before = self.errors.len();
        let Some(name) = doc.metadata.name.filter(|n| !n.is_empty()) else {
            origin.name = "(unnamed)".into();
            self.errors.push(origin.error("metadata.name", "required"));
            return None;
        };
        origin.name = name.clone();
        let namespace = doc
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let (prefix, destination, sources, rules, rules_field) = match doc.spec {
            Some(spec) => (
                "spec.",
                Some(spec.destination),
                spec.sources,
                spec.rules,
                "rules",
            ),
            None => (
                "",
                doc.destination,
                doc.sources.unwrap_or_default(),
                doc.specs.unwrap_or_default(),
                "specs",
            ),
        };
        let Some(destination) = destination else {
            self.errors
                .push(origin.error(format!("{prefix}destination"), "required"));
            return None;
        };
        let mut account = |field: String, r: raw::IdentityRef| {
            if r.kind != "ServiceAccount" {
                self.errors.push(origin.error(
                    format!("{field}.kind"),
                    format!("must be ServiceAccount, got {:?}", r.kind),
                ));
            }
            (r.namespace.unwrap_or_else(|| namespace.clone()), r.name)
        };
        let destination = account(format!("{prefix}destination"), destination);
        let sources: Vec<_> = sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| account(format!("{prefix}sources[{i}]"), s))
            .collect();
        let mut compiled = Vec::new();
        for (i, rule) in rules.into_iter().enumerate() {
            let field = format!("{prefix}{rules_field}[{i}]");
            if rule.kind != "HTTPRouteGroup" {
                self.errors.push(origin.error(
                    format!("{field}.kind"),
                    format!("only HTTPRouteGroup is supported, got {:?}", rule.kind),
                ));
                continue;
            }
            let Some(group) = groups
                .iter()
                .find(|g| g.name == rule.name && g.namespace == namespace)
            else {
                self.errors.push(origin.error(
                    format!("{field}.name"),
                    format!(
                        "no HTTPRouteGroup {:?} in namespace {namespace:?}",
                        rule.name
                    ),
                ));
                continue;
            };
            for (j, m) in rule.matches.iter().enumerate() {
                if !group.matches.iter().any(|gm| &gm.name == m) {
                    self.errors.push(origin.error(
                        format!("{field}.matches[{j}]"),
                        format!("HTTPRouteGroup {:?} has no match named {m:?}", group.name),
                    ));
                }
            }
            compiled.push((rule.name, rule.matches));
        }
        (self.errors.len() == before).then_some(TrafficTarget {
            origin,
            name,
            namespace,
            destination,
            sources,
            rules: compiled,
        })
    }
}

/// A backend weight: a Kubernetes quantity in milli-units for v1alpha1, a non-negative
/// integer from v1alpha2 on.
fn parse_weight(version: &str, value: &Value) -> Result<u64, String> {
    const MAX: i128 = 1 << 53;
    let weight: i128 = if version == "v1alpha1" {
        match value {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i as i128 * 1000,
                (None, Some(f)) => values::parse_quantity_milli(&f.to_string())?,
                _ => return Err(format!("expected a quantity, got {n}")),
            },
            Value::String(s) => values::parse_quantity_milli(s)?,
            other => {
                return Err(format!(
                    "expected a quantity such as 500m or 1, got {}",
                    describe(other)
                ))
            }
        }
    } else {
        match value {
            Value::Number(n) => match n.as_i64() {
                Some(i) => i as i128,
                None => return Err(format!("must be a whole number, got {n}")),
            },
            other => return Err(format!("must be a whole number, got {}", describe(other))),
        }
    };
    if weight < 0 {
        let shown = if version == "v1alpha1" {
            display_value(value)
        } else {
            weight.to_string()
        };
        return Err(format!("must not be negative, got {shown}"));
    }
    if weight > MAX {
        return Err(format!(
            "is too large (at most {MAX}), got {}",
            display_value(value)
        ));
    }
    Ok(weight as u64)
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => describe(other),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms_cover_kubernetes_names() {
        let short = host_forms("My-Website", "prod");
        assert_eq!(
            short,
            [
                "my-website",
                "my-website.prod",
                "my-website.prod.svc",
                "my-website.prod.svc.cluster",
                "my-website.prod.svc.cluster.local"
            ]
        );
        assert_eq!(
            host_forms("my-website.prod.svc.cluster.local", "default"),
            short
        );
        assert_eq!(host_forms("my-website.prod.svc", "default"), short);
        assert_eq!(
            host_forms("www.example.com", "default"),
            ["www.example.com"]
        );
    }

    #[test]
    fn weights_by_version() {
        let v = |s: &str| serde_yaml::from_str::<Value>(s).unwrap();
        assert_eq!(parse_weight("v1alpha1", &v("500m")), Ok(500));
        assert_eq!(parse_weight("v1alpha1", &v("1")), Ok(1000));
        assert_eq!(parse_weight("v1alpha2", &v("90")), Ok(90));
        assert_eq!(
            parse_weight("v1alpha2", &v("-5")),
            Err("must not be negative, got -5".into())
        );
        assert!(parse_weight("v1alpha2", &v("\"50\"")).is_err());
        assert!(parse_weight("v1alpha4", &v("1.5")).is_err());
    }
}
