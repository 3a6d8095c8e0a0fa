//! What the fuzz targets share: the YAML model, a PKI for documents that name TLS files,
//! the checks run on every loaded configuration, and the fixed table of the host target.

pub mod model;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use splitproxy::config::{self, Config};
use splitproxy::metrics::Metrics;
use splitproxy::routing::RoutingTable;

/// One current-thread runtime for the async steps (TLS acceptor, table build).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A folder with a development PKI (`ca.pem`, `server.pem`, `server-key.pem`,
/// `client.pem`, `client-key.pem`) and a `garbage.pem`, made once under fuzz/target and
/// kept: documents name these files relative to it.
pub fn pki_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-pki");
        if !dir.join("garbage.pem").exists() {
            // made beside and renamed into place: parallel fuzzer jobs may race here
            let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
                .expect("temp dir under fuzz/target");
            let clients = [(
                "client".to_string(),
                splitproxy::cmd::pki::default_spiffe("client"),
            )];
            splitproxy::cmd::pki::init(tmp.path(), true, &["localhost".into()], &clients)
                .expect("development PKI");
            std::fs::write(
                tmp.path().join("garbage.pem"),
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            )
            .expect("garbage.pem");
            // lost a race: the other job's folder is as good, and `tmp` is removed on drop
            let _ = std::fs::rename(tmp.path(), &dir);
        }
        dir
    })
}

/// Where the fuzzed configuration file claims to be (it is never written).
pub fn config_path() -> PathBuf {
    pki_dir().join("config.yaml")
}

/// Load `text` as a configuration file (printed first when `SPLITPROXY_FUZZ_PRINT` is set,
/// to read a crash input as YAML) and check what came out: a rejection says why; an
/// accepted configuration builds (TLS acceptor and routing table, when it needs no DNS)
/// and routes a request to each of its hosts without panicking.
pub fn check_config(text: &str) {
    static PRINT: OnceLock<bool> = OnceLock::new();
    if *PRINT.get_or_init(|| std::env::var_os("SPLITPROXY_FUZZ_PRINT").is_some()) {
        eprintln!("---- input\n{text}");
    }
    match config::load_documents(&config_path(), text) {
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected without an error");
            for e in &errors {
                assert!(!e.to_string().is_empty());
            }
        }
        Ok(config) => check_valid(config),
    }
}

fn check_valid(config: Config) {
    for split in &config.splits {
        assert!(!split.hosts.is_empty(), "split {} has no host", split.name);
    }
    // a DNS name would be resolved: no network from a fuzzer
    let ip_only = config
        .proxy
        .services
        .values()
        .all(|s| s.endpoints.iter().all(|e| e.ip().is_some()));
    if !ip_only {
        return;
    }
    let metrics = Metrics::new();
    let loaded = runtime().block_on(splitproxy::load::prepare(config, 1, &metrics, None));
    let Ok(loaded) = loaded else { return };
    let table = &loaded.table;
    let _ = table.describe();
    for split in table.splits() {
        for host in &split.source().hosts {
            assert!(table.lookup(host).is_some(), "no route for host {host:?}");
            let Ok(req) = http::Request::get("/").header("host", host).body(()) else {
                continue;
            };
            let _ = table.route(&req, None, "fuzz");
        }
    }
}

/// The table of the host target, built once from a fixed configuration, and the host
/// forms it was built from.
pub fn host_table() -> &'static (RoutingTable, Vec<String>) {
    static TABLE: OnceLock<(RoutingTable, Vec<String>)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = config::load_documents(Path::new("hosts.yaml"), HOSTS_CONFIG)
            .unwrap_or_else(|e| panic!("fixed host config rejected: {e:?}"));
        let config = std::sync::Arc::new(config);
        let metrics = Metrics::new();
        let table = runtime()
            .block_on(RoutingTable::build(config.clone(), 1, &metrics, None))
            .unwrap_or_else(|e| panic!("fixed host table: {e:?}"));
        let forms = config.splits.iter().flat_map(|s| s.hosts.clone()).collect();
        (table, forms)
    })
}

/// Short roots in two namespaces (short forms are one flat space: `web` in two namespaces
/// is one host, refused), a qualified root, an FQDN, a mixed-case root, and two
/// splits sharing a root (one conditional).
const HOSTS_CONFIG: &str = r#"
apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: hosts
spec:
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  services:
    web-v1: ["127.0.0.1:9001"]
    web-v2: ["127.0.0.1:9002"]
    api: ["127.0.0.1:9003"]
    shop: ["[::1]:9004"]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: web, namespace: default}
spec:
  service: web
  backends: [{service: web-v1, weight: 90}, {service: web-v2, weight: 10}]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: store, namespace: prod}
spec:
  service: store
  backends: [{service: web-v2, weight: 1}]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: api, namespace: default}
spec:
  service: api.tools.svc.cluster.local
  backends: [{service: api, weight: 1}]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: shop, namespace: default}
spec:
  service: Shop.Example.COM.
  backends: [{service: shop, weight: 1}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: beta}
spec:
  matches: [{name: beta, headers: {x-beta: "1"}}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web-beta, namespace: default}
spec:
  service: web
  matches: [{kind: HTTPRouteGroup, name: beta}]
  backends: [{service: web-v2, weight: 1}]
"#;
