//! OAM: a TrafficSplit declared as a trait of an application's component, in an
//! `ApplicationConfiguration` (core.oam.dev/v1alpha2) and a KubeVela `Application`
//! (core.oam.dev/v1beta1). Both fixtures load unchanged, route by their weights over real
//! sockets, and build exactly the table of the plain TrafficSplit they stand for; errors
//! name the application, the component and the trait; other traits are skipped with one
//! warning each.

use std::path::{Path, PathBuf};
use std::process::Command;

use splitproxy::config;

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A folder with `proxy.yaml` and the named fixture copied unchanged.
fn folder(proxy: &str, fixture_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), proxy).unwrap();
    std::fs::copy(fixture(fixture_name), dir.path().join(fixture_name)).unwrap();
    dir
}

/// Send `n` requests for `host`; count the answers of the two backends.
async fn count(proxy: &Proxy, host: &str, names: [&str; 2], n: u64) -> [u64; 2] {
    let c = client();
    let mut seen = [0u64; 2];
    for _ in 0..n {
        let a = get(&c, &proxy.url("/"), host).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let i = names
            .iter()
            .position(|b| *b == a.backend())
            .unwrap_or_else(|| panic!("unexpected backend {:?}", a.backend()));
        seen[i] += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_configuration_trait_routes_by_its_weights() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = folder(
        &proxy_doc(&[("bookstore", v1.addr), ("bookstore-v2", v2.addr)], ""),
        "oam-appconfig.yaml",
    );
    let path = dir.path().to_path_buf();
    let proxy = Proxy::start_at(dir, path).await;
    // the root service in every Kubernetes form of the application's namespace
    let seen = count(
        &proxy,
        "bookstore.bookstore.svc.cluster.local",
        ["v1", "v2"],
        1000,
    )
    .await;
    assert_two_way_split(seen, [75.0, 25.0]);
    assert_eq!(v1.hits() + v2.hits(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubevela_traffic_split_trait_routes_by_its_weights() {
    let (v1, v2) = (Backend::spawn("v1").await, Backend::spawn("v2").await);
    let dir = folder(
        &proxy_doc(
            &[("my-website-v1", v1.addr), ("my-website-v2", v2.addr)],
            "",
        ),
        "oam-kubevela.yaml",
    );
    let path = dir.path().to_path_buf();
    let proxy = Proxy::start_at(dir, path).await;
    // the root service defaults to the component's name
    let seen = count(&proxy, "my-website", ["v1", "v2"], 1000).await;
    assert_two_way_split(seen, [80.0, 20.0]);
    let (_, routes) = admin_get(&proxy, "/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["splits"][0]["name"], "my-website");
    assert_eq!(routes["splits"][0]["namespace"], "default");

    // an edit of the trait reloads like an edit of the TrafficSplit
    let file = proxy.path.join("oam-kubevela.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    rewrite(
        &file,
        &text
            .replace("weight: 80", "weight: 0")
            .replace("weight: 20", "weight: 100"),
    );
    proxy.wait_version(2).await;
    assert_eq!(count(&proxy, "my-website", ["v1", "v2"], 50).await, [0, 50]);
}

// === the same table as the TrafficSplit each stands for ===

const PROXY: &str = r#"
apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: gateway
spec:
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  services:
    bookstore: ["127.0.0.1:8085"]
    bookstore-v2: ["127.0.0.1:8086"]
    my-website-v1: ["127.0.0.1:8081"]
    my-website-v2: ["127.0.0.1:8082"]
"#;

const BOOKSTORE_SPLIT: &str = r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: bookstore-split
  namespace: bookstore
spec:
  service: bookstore.bookstore
  backends:
  - service: bookstore
    weight: 75
  - service: bookstore-v2
    weight: 25
"#;

const WEBSITE_SPLIT: &str = r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: my-website
  namespace: default
spec:
  service: my-website
  backends:
  - service: my-website-v1
    weight: 80
  - service: my-website-v2
    weight: 20
"#;

fn splitproxy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args(args)
        .output()
        .expect("run splitproxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `validate`'s routing table for a folder, without its first line (which names the path).
fn table(dir: &Path) -> String {
    let (code, stdout, stderr) = splitproxy(&["validate", "--config", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{}: {stderr}", dir.display());
    let (first, rest) = stdout.split_once('\n').unwrap();
    assert!(first.starts_with("configuration OK"), "{stdout}");
    rest.to_string()
}

/// The validated splits, without where they were read (file, document, object).
fn splits(dir: &Path) -> Vec<String> {
    let cfg = config::read(dir).result.unwrap_or_else(|e| panic!("{e:?}"));
    cfg.splits
        .iter()
        .map(|s| {
            format!(
                "{}/{} {} {:?} {:?} {:?} {:?} {} {:?}",
                s.namespace,
                s.name,
                s.service,
                s.hosts,
                s.backends
                    .iter()
                    .map(|b| (&b.service, b.weight))
                    .collect::<Vec<_>>(),
                s.matches,
                s.selection,
                s.service_account,
                s.fallback
            )
        })
        .collect()
}

#[test]
fn each_oam_fixture_builds_the_table_of_the_traffic_split_it_stands_for() {
    for (fixture_name, plain) in [
        ("oam-appconfig.yaml", BOOKSTORE_SPLIT),
        ("oam-kubevela.yaml", WEBSITE_SPLIT),
    ] {
        let oam = folder(PROXY, fixture_name);
        let ts = tempfile::tempdir().unwrap();
        std::fs::write(ts.path().join("proxy.yaml"), PROXY).unwrap();
        std::fs::write(ts.path().join("split.yaml"), plain).unwrap();
        let (a, b) = (table(oam.path()), table(ts.path()));
        assert!(a.contains("\nsplit "), "{fixture_name}: {a}");
        assert_eq!(a, b, "{fixture_name}");
        assert_eq!(splits(oam.path()), splits(ts.path()), "{fixture_name}");
    }
}

// === warnings and errors ===

/// The configuration's warnings, with the folder's path removed.
fn warnings(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    config::read(dir)
        .warnings
        .iter()
        .map(|w| w.replace(&prefix, ""))
        .filter(|w| w.contains("skipped"))
        .collect()
}

#[test]
fn other_traits_and_components_without_traits_are_skipped_with_one_warning_each() {
    let dir = folder(PROXY, "oam-appconfig.yaml");
    assert_eq!(
        warnings(dir.path()),
        [
            "oam-appconfig.yaml: document 1: skipped: kind \"Component\" (core.oam.dev/v1alpha2) is not read by splitproxy",
            "oam-appconfig.yaml: document 2 (ApplicationConfiguration bookstore-app): spec.components[0] (component bookstore).traits[0]: skipped: trait kind \"ManualScalerTrait\" (core.oam.dev/v1alpha2) is not read by splitproxy",
            "oam-appconfig.yaml: document 2 (ApplicationConfiguration bookstore-app): spec.components[1] (component bookbuyer): skipped: no traits",
        ]
    );
    let dir = folder(PROXY, "oam-kubevela.yaml");
    assert_eq!(
        warnings(dir.path()),
        [
            "oam-kubevela.yaml: document 1 (Application website): spec.components[0] (component my-website).traits[0]: skipped: trait type \"scaler\" is not read by splitproxy (it reads traffic-split, smi-split)",
            "oam-kubevela.yaml: document 1 (Application website): spec.components[1] (component cache): skipped: no traits",
        ]
    );
    // and `validate` prints them
    let (code, _, stderr) = splitproxy(&["validate", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("skipped: ").count(), 2, "{stderr}");
}

/// Load PROXY plus `yaml` (as `f.yaml`); the error lines, without the folder's path.
fn errors_of(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), PROXY).unwrap();
    std::fs::write(dir.path().join("f.yaml"), yaml).unwrap();
    let prefix = format!("{}/", dir.path().display());
    match config::read(dir.path()).result {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| e.to_string().replace(&prefix, ""))
            .collect(),
    }
}

const APPCONFIG_HEAD: &str = r#"
apiVersion: core.oam.dev/v1alpha2
kind: ApplicationConfiguration
metadata:
  name: shop
spec:
  components:
  - componentName: web
    traits:
    - trait:
        apiVersion: core.oam.dev/v1alpha2
        kind: ManualScalerTrait
        spec: {replicaCount: 2}
    - trait:
"#;

/// An ApplicationConfiguration whose component `web` has the TrafficSplit `split`
/// (indented under `trait:`) as its trait 1.
fn appconfig(split: &str) -> String {
    let mut s = APPCONFIG_HEAD.to_string();
    for line in split.trim_start_matches('\n').lines() {
        s.push_str("        ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

const VELA_HEAD: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: shop
spec:
  components:
  - name: web
    type: webservice
    properties: {image: "shop:1"}
    traits:
"#;

/// A KubeVela Application whose component `web` has the trait `traits` (indented).
fn vela(traits: &str) -> String {
    let mut s = VELA_HEAD.to_string();
    for line in traits.trim_start_matches('\n').lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

#[test]
fn errors_name_the_application_the_component_and_the_trait() {
    let cases: Vec<(String, &str)> = vec![
        (
            appconfig(&WEBSITE_SPLIT.replace("weight: 20", "weight: -5")),
            "f.yaml: document 1 (ApplicationConfiguration shop): spec.components[0] (component web).traits[1].trait.spec.backends[1].weight: must not be negative, got -5",
        ),
        (
            appconfig(&WEBSITE_SPLIT.replace("my-website-v2", "ghost")),
            "f.yaml: document 1 (ApplicationConfiguration shop): spec.components[0] (component web).traits[1].trait.spec.backends[1].service: unknown service \"ghost\"",
        ),
        (
            appconfig(&WEBSITE_SPLIT.replace("v1alpha2", "v9")),
            "f.yaml: document 1 (ApplicationConfiguration shop): spec.components[0] (component web).traits[1].trait.apiVersion: unsupported version \"split.smi-spec.io/v9\"",
        ),
        (
            appconfig(&WEBSITE_SPLIT.replace("  service: my-website\n", "")),
            "f.yaml: document 1 (ApplicationConfiguration shop): spec.components[0] (component web).traits[1].trait.spec: missing field `service`",
        ),
        (
            appconfig(&WEBSITE_SPLIT.replace("  name: my-website\n", "  annotations: {splitproxy.dev/selection: fastest}\n")),
            "f.yaml: document 1 (ApplicationConfiguration shop): spec.components[0] (component web).traits[1].trait.metadata.annotations.splitproxy.dev/selection: unknown selection policy \"fastest\"",
        ),
        (
            vela("- type: traffic-split\n  properties:\n    backends:\n    - {service: my-website-v1, weight: 90}\n    - {service: my-website-v2, weight: -5}\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties.backends[1].weight: must not be negative, got -5",
        ),
        (
            vela("- type: smi-split\n  properties:\n    backends:\n    - {service: ghost, weight: 1}\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties.backends[0].service: unknown service \"ghost\"",
        ),
        (
            vela("- type: traffic-split\n  properties:\n    backend: []\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties.backend: unknown field `backend`, expected `service` or `backends`",
        ),
        (
            vela("- type: traffic-split\n  properties:\n    backends: []\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties.backends: must list at least one backend",
        ),
        (
            vela("- type: traffic-split\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties: required",
        ),
        (
            vela("- type: traffic-split\n  properties:\n    backends:\n    - {service: my-website-v1, weight: \"90\"}\n"),
            "f.yaml: document 1 (Application shop): spec.components[0] (component web).traits[0].properties.backends[0].weight: must be a whole number",
        ),
        (
            VELA_HEAD.replace("  - name: web\n", "  - type: worker\n").replace("    type: webservice\n", "") + "    - type: traffic-split\n      properties: {backends: [{service: my-website-v1, weight: 1}]}\n",
            "f.yaml: document 1 (Application shop): spec.components[0].name: required",
        ),
        (
            VELA_HEAD.replace("  name: shop\n", "  labels: {app: shop}\n"),
            "f.yaml: document 1 (Application (unnamed)): metadata.name: required",
        ),
        (
            VELA_HEAD.replace("v1beta1", "v1alpha2"),
            "f.yaml: document 1 (Application shop): apiVersion: unsupported version \"core.oam.dev/v1alpha2\" (supported: core.oam.dev/v1beta1)",
        ),
    ];
    for (yaml, expected) in cases {
        let errors = errors_of(&yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "expected {expected:?}\n got {errors:#?}\n for\n{yaml}"
        );
    }
}

#[test]
fn an_oam_split_and_a_plain_one_for_the_same_root_are_refused_naming_both() {
    let yaml = vela("- type: traffic-split\n  properties:\n    service: my-website\n    backends:\n    - {service: my-website-v1, weight: 1}\n") + "---" + WEBSITE_SPLIT;
    let errors = errors_of(&yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("f.yaml: document 2 (TrafficSplit my-website): spec.service: root service \"my-website\" is already split by TrafficSplit web (f.yaml: document 1 (Application shop) spec.components[0] (component web).traits[0].properties)"),
        "{errors:#?}"
    );
}

#[test]
fn an_embedded_split_of_any_version_lives_in_the_applications_namespace() {
    // v1alpha1 quantities; no name (the component's); its own namespace overridden
    let v1alpha1 = "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata:\n  namespace: elsewhere\nspec:\n  service: my-website\n  backends:\n  - service: my-website-v1\n    weight: 500m\n  - service: my-website-v2\n    weight: 1\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), PROXY).unwrap();
    let yaml = appconfig(v1alpha1).replace("  name: shop\n", "  name: shop\n  namespace: prod\n");
    std::fs::write(dir.path().join("f.yaml"), yaml).unwrap();
    let read = config::read(dir.path());
    let cfg = read.result.unwrap_or_else(|e| panic!("{e:?}"));
    let s = &cfg.splits[0];
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("web", "prod"));
    assert!(s
        .hosts
        .contains(&"my-website.prod.svc.cluster.local".to_string()));
    let w: Vec<u64> = s.backends.iter().map(|b| b.weight).collect();
    assert_eq!(w, [500, 1000]);
    assert!(
        read.warnings.iter().any(|w| w.contains("spec.components[0] (component web).traits[1].trait.metadata.namespace: \"elsewhere\" ignored")),
        "{:?}",
        read.warnings
    );

    // v1alpha4 matches resolve against HTTPRouteGroups of the application's namespace
    let v1alpha4 = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: ab\nspec:\n  service: my-website\n  matches:\n  - kind: HTTPRouteGroup\n    name: firefox\n  backends:\n  - service: my-website-v1\n    weight: 0\n  - service: my-website-v2\n    weight: 100\n";
    let group = "---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: firefox\n  namespace: prod\nspec:\n  matches:\n  - name: firefox-users\n    headers:\n    - user-agent: \".*Firefox.*\"\n";
    let yaml =
        appconfig(v1alpha4).replace("  name: shop\n", "  name: shop\n  namespace: prod\n") + group;
    std::fs::write(dir.path().join("f.yaml"), &yaml).unwrap();
    let cfg = config::read(dir.path())
        .result
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.splits[0].matches, ["firefox"]);
    // in another namespace the group is not found, and the error says where the match is
    let errors = errors_of(&yaml.replace(
        "  namespace: prod\nspec:\n  matches:\n  - name: firefox-users",
        "  namespace: test\nspec:\n  matches:\n  - name: firefox-users",
    ));
    assert!(
        errors.iter().any(|e| e.contains("spec.components[0] (component web).traits[1].trait.spec.matches[0].name: no HTTPRouteGroup \"firefox\" in namespace \"prod\"")),
        "{errors:#?}"
    );
}

#[test]
fn a_kubevela_applications_annotations_choose_the_selection_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), PROXY).unwrap();
    let yaml = vela("- type: traffic-split\n  properties:\n    service: shop\n    backends:\n    - {service: my-website-v1, weight: 3}\n    - {service: my-website-v2, weight: 1}\n")
        .replace("  name: shop\n", "  name: shop\n  annotations:\n    splitproxy.dev/selection: deterministic\n");
    std::fs::write(dir.path().join("f.yaml"), &yaml).unwrap();
    let cfg = config::read(dir.path())
        .result
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.splits[0].selection, config::Selection::Deterministic);
    assert_eq!(cfg.splits[0].service, "shop");
    let errors = errors_of(&yaml.replace("deterministic", "fastest"));
    assert!(
        errors.iter().any(|e| e.starts_with("f.yaml: document 1 (Application shop): metadata.annotations.splitproxy.dev/selection: unknown selection policy \"fastest\"")),
        "{errors:#?}"
    );
}
