//! Loading and validation: every SMI version as the specification and the OSM, Linkerd and
//! Flagger documentation write it, every validation error with its location, the shipped
//! examples, and the `validate` command's output and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use splitproxy::config::{self, ConfigError};

const PROXY: &str = r#"
apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: gateway
spec:
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  services:
    website-v1: ["127.0.0.1:8081"]
    website-v2: ["127.0.0.1:8082"]
    webapp: ["127.0.0.1:8083"]
    webapp-v2: ["127.0.0.1:8084"]
    bookstore: ["127.0.0.1:8085"]
    bookstore-v2: ["127.0.0.1:8086"]
    podinfo-canary: ["127.0.0.1:8087"]
    podinfo-primary: ["127.0.0.1:8088"]
"#;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A folder holding the shared Proxy document and the named fixture, unchanged.
fn folder_with(fixture_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), PROXY).unwrap();
    std::fs::copy(fixture(fixture_name), dir.path().join(fixture_name)).unwrap();
    dir
}

fn weights(cfg: &config::Config, split: &str) -> Vec<(String, u64)> {
    let s = cfg
        .splits
        .iter()
        .find(|s| s.name == split)
        .expect("split loaded");
    s.backends
        .iter()
        .map(|b| (b.service.clone(), b.weight))
        .collect()
}

fn w(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(s, w)| (s.to_string(), *w)).collect()
}

#[test]
fn every_smi_version_loads_unchanged() {
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, u64)]);
    let cases: &[Case] = &[
        (
            "smi-v1alpha1.yaml",
            "canary",
            &[("website-v1", 900), ("website-v2", 100)],
        ),
        (
            "linkerd-v1alpha1.yaml",
            "web-split",
            &[("webapp", 1000), ("webapp-v2", 500)],
        ),
        (
            "osm-v1alpha2.yaml",
            "bookstore-split",
            &[("bookstore", 50), ("bookstore-v2", 50)],
        ),
        (
            "smi-v1alpha3.yaml",
            "ab-test",
            &[("website-v1", 0), ("website-v2", 100)],
        ),
        (
            "smi-v1alpha4.yaml",
            "ab-test",
            &[("website-v1", 0), ("website-v2", 100)],
        ),
        (
            "flagger-v1alpha2.yaml",
            "podinfo",
            &[("podinfo-canary", 0), ("podinfo-primary", 100)],
        ),
        ("with-deployment.yaml", "website", &[("website-v1", 1)]),
    ];
    for (file, split, expected) in cases {
        let dir = folder_with(file);
        let cfg = config::load(dir.path()).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        assert_eq!(weights(&cfg, split), w(expected), "{file}");
    }
}

#[test]
fn matches_and_namespaced_roots_resolve() {
    let dir = folder_with("smi-v1alpha3.yaml");
    let cfg = config::load(dir.path()).unwrap();
    let split = &cfg.splits[0];
    assert_eq!(split.matches, ["ab-test"]);
    let group = &cfg.route_groups[0];
    assert_eq!(group.matches[0].headers[0].0, "user-agent");
    assert!(group.matches[0].headers[0]
        .1
        .is_match("Mozilla/5.0 Firefox/120.0"));
    assert!(!group.matches[0].headers[0].1.is_match("curl/8"));

    let dir = folder_with("osm-v1alpha2.yaml");
    let cfg = config::load(dir.path()).unwrap();
    assert!(cfg.splits[0]
        .hosts
        .contains(&"bookstore.bookstore.svc.cluster.local".to_string()));
    // the root service is also a backend: a normal OSM/Argo split
    assert_eq!(cfg.splits[0].fallback.as_deref(), Some("bookstore"));
}

/// Load `yaml` written as `name` in a temporary folder; return the error lines.
fn errors_of(name: &str, yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    match config::load(&path) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e: &ConfigError| {
                e.to_string()
                    .replace(&format!("{}/", dir.path().display()), "")
            })
            .collect(),
    }
}

const SPLIT_HEAD: &str = "\n---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: my-trafficsplit\nspec:\n  service: my-website\n  backends:\n";

fn with_split(backends: &str) -> String {
    PROXY.to_string() + SPLIT_HEAD + backends
}

#[test]
fn negative_weight_names_file_document_field_and_value() {
    let errors = errors_of(
        "split.yaml",
        &with_split(
            "  - service: website-v1\n    weight: 90\n  - service: website-v2\n    weight: -5\n",
        ),
    );
    assert_eq!(errors, ["split.yaml: document 2 (TrafficSplit my-trafficsplit): spec.backends[1].weight: must not be negative, got -5"]);
}

#[test]
fn each_validation_error_has_its_message() {
    let cases: Vec<(String, &str)> = vec![
        (
            with_split("  - service: website-v1\n    weight: 1\n  - service: website-v1\n    weight: 2\n"),
            "document 2 (TrafficSplit my-trafficsplit): spec.backends[1].service: \"website-v1\" is listed twice (first at spec.backends[0])",
        ),
        (
            with_split("  - service: website-v1\n    weight: 1\n  - service: nowhere\n    weight: 2\n"),
            "document 2 (TrafficSplit my-trafficsplit): spec.backends[1].service: unknown service \"nowhere\"",
        ),
        (with_split("  - service: website-v1\n    weight: 1.5\n"), "spec.backends[0].weight: must be a whole number, got 1.5"),
        (with_split("  - service: website-v1\n    weight: \"50\"\n"), "spec.backends[0].weight: must be a whole number, got string \"50\""),
        (with_split("  - service: website-v1\n    weight: 1\n    wieght: 2\n"), "spec.backends[0].wieght: unknown field `wieght`"),
        (
            with_split("  - service: website-v1\n    weight: 1\n")
                + "---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: second\nspec:\n  service: my-website.default.svc.cluster.local\n  backends:\n  - service: website-v2\n    weight: 1\n",
            "document 3 (TrafficSplit second): spec.service: root service \"my-website.default.svc.cluster.local\" is already split by TrafficSplit my-trafficsplit",
        ),
        (PROXY.replace("\"127.0.0.1:8081\"", "\"127.0.0.1\""), "document 1 (Proxy gateway): spec.services.website-v1[0]: expected host:port"),
        (PROXY.replace("\"127.0.0.1:8082\"", "\"bad host:80\""), "spec.services.website-v2[0]: expected host:port"),
        (PROXY.replace("  listen:", "  listne:"), "document 1 (Proxy gateway): spec.listne: unknown field `listne`"),
        (PROXY.replace("  admin: 127.0.0.1:0", "  admin: 127.0.0.1:0\n  timeouts:\n    connect: 2 seconds"), "spec.timeouts.connect: expected a duration"),
        (PROXY.replace("  admin: 127.0.0.1:0", "  admin: 127.0.0.1:0\n  access: strict"), "spec.access: must be permissive or enforce, got \"strict\""),
        (PROXY.replace("splitproxy.dev/v1alpha1", "splitproxy.dev/v9"), "apiVersion: unsupported version \"splitproxy.dev/v9\""),
        (
            with_split("  - service: website-v1\n    weight: 1\n").replace("name: my-trafficsplit", "name: my-trafficsplit\n  annotations:\n    splitproxy.dev/selecton: random"),
            "metadata.annotations.splitproxy.dev/selecton: unknown splitproxy annotation",
        ),
        (
            with_split("  - service: website-v1\n    weight: 1\n").replace("name: my-trafficsplit", "name: my-trafficsplit\n  annotations:\n    splitproxy.dev/selection: sticky\n    splitproxy.dev/sticky-header: \"x user\""),
            "metadata.annotations.splitproxy.dev/sticky-header: not a valid header name: \"x user\"",
        ),
        (SPLIT_HEAD.to_string() + "  - service: website-v1\n    weight: 1\n", "split.yaml: no Proxy document"),
        ("a: [unclosed".to_string(), "split.yaml: document 1: invalid YAML"),
    ];
    for (yaml, expected) in cases {
        let errors = errors_of("split.yaml", &yaml);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let yaml = PROXY.replace("  listen:", "  listne:")
        + SPLIT_HEAD
        + "  - service: website-v1\n    weight: -1\n  - service: ghost\n    weight: 1\n";
    let errors = errors_of("all.yaml", &yaml);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn relative_tls_paths_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for f in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::write(dir.path().join("certs").join(f), "x").unwrap();
    }
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let yaml = PROXY.replace(
        "  admin: 127.0.0.1:0",
        "  admin: 127.0.0.1:0\n  tls:\n    cert: ../certs/server.pem\n    key: ../certs/server-key.pem\n    clientCA: ../certs/ca.pem",
    );
    std::fs::write(dir.path().join("conf/proxy.yaml"), yaml).unwrap();
    let cfg = config::load(&dir.path().join("conf")).unwrap();
    let tls = cfg.proxy.tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("conf/../certs/server.pem"));
    // clientAuth omitted with a clientCA: require, verified against that CA
    assert_eq!(
        tls.client_auth,
        config::ClientAuth::Require(dir.path().join("conf/../certs/ca.pem"))
    );
}

#[test]
fn client_auth_without_a_client_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["server.pem", "server-key.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let tls = "  admin: 127.0.0.1:0\n  tls:\n    cert: server.pem\n    key: server-key.pem";
    for mode in ["require", "optional"] {
        let yaml = PROXY.replace(
            "  admin: 127.0.0.1:0",
            &format!("{tls}\n    clientAuth: {mode}"),
        );
        std::fs::write(dir.path().join("proxy.yaml"), yaml).unwrap();
        let errors: Vec<String> = config::load(dir.path())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "{mode}: {errors:#?}");
        assert!(
            errors[0].ends_with("proxy.yaml: document 1 (Proxy gateway): spec.tls.clientCA: required when clientAuth is require or optional (the CA that signs client certificates)"),
            "{mode}: {errors:#?}"
        );
    }
    // neither clientAuth nor clientCA: TLS without client certificates
    std::fs::write(
        dir.path().join("proxy.yaml"),
        PROXY.replace("  admin: 127.0.0.1:0", tls),
    )
    .unwrap();
    let cfg = config::load(dir.path()).unwrap();
    assert_eq!(cfg.proxy.tls.unwrap().client_auth, config::ClientAuth::None);
    // a clientCA with clientAuth none must exist and is watched, but asks for nothing
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    let yaml = PROXY.replace(
        "  admin: 127.0.0.1:0",
        &format!("{tls}\n    clientCA: ca.pem\n    clientAuth: none"),
    );
    std::fs::write(dir.path().join("proxy.yaml"), yaml).unwrap();
    let cfg = config::load(dir.path()).unwrap();
    assert_eq!(cfg.proxy.tls.unwrap().client_auth, config::ClientAuth::None);
    assert!(
        cfg.files.contains(&dir.path().join("ca.pem")),
        "{:?}",
        cfg.files
    );
}

// === the `validate` command ===

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

#[test]
fn validate_prints_the_table_for_every_shipped_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("config")];
    for entry in std::fs::read_dir(root.join("config/examples")).unwrap() {
        paths.push(entry.unwrap().path());
    }
    for path in paths {
        if path.extension().is_some_and(|e| e != "yaml") {
            continue;
        }
        let (code, stdout, stderr) = splitproxy(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", path.display());
        assert!(
            stdout.contains("configuration OK") && stdout.contains("weight"),
            "{}: {stdout}",
            path.display()
        );
    }
    let (_, stdout, _) = splitproxy(&[
        "validate",
        "--config",
        root.join("config").to_str().unwrap(),
    ]);
    assert!(stdout.contains("split default/my-trafficsplit"), "{stdout}");
    assert!(
        stdout.contains("my-website-v1") && stdout.contains("50.00%"),
        "{stdout}"
    );
}

#[test]
fn validate_prints_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.yaml");
    std::fs::write(&path, with_split("  - service: website-v1\n    weight: 90\n  - service: website-v2\n    weight: -5\n  - service: ghost\n    weight: 1\n")).unwrap();
    let (code, _stdout, stderr) = splitproxy(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("split.yaml: document 2 (TrafficSplit my-trafficsplit): spec.backends[1].weight: must not be negative, got -5"), "{stderr}");
    assert!(
        stderr.contains("spec.backends[2].service: unknown service \"ghost\""),
        "{stderr}"
    );
}

#[test]
fn unknown_kinds_are_skipped_with_one_warning_naming_file_and_document() {
    let dir = folder_with("with-deployment.yaml");
    let (code, stdout, stderr) =
        splitproxy(&["validate", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("website-v1"));
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Deployment"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("with-deployment.yaml: document 1"),
        "{stderr}"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["validate", "--help"],
        &["certs", "init", "--help"],
    ] {
        let (code, stdout, _) = splitproxy(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage"), "{args:?}: {stdout}");
    }
}

#[test]
fn the_design_documents_example_loads_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("design-example.yaml"),
        dir.path().join("gateway.yaml"),
    )
    .unwrap();
    // the example names certs/ relative to its own folder
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for f in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::write(dir.path().join("certs").join(f), "placeholder").unwrap();
    }
    let cfg = config::load(dir.path()).unwrap_or_else(|e| panic!("{e:#?}"));
    let p = &cfg.proxy;
    assert_eq!(p.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(p.admin, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(
        p.tls.as_ref().unwrap().client_auth,
        config::ClientAuth::Require(dir.path().join("certs/ca.pem"))
    );
    assert_eq!(p.access, config::AccessMode::Permissive);
    assert_eq!(p.timeouts, config::Timeouts::default());
    assert_eq!(p.shutdown, config::ShutdownSettings::default());
    assert!(!p.expose_backend);
    // "these are the defaults"
    assert_eq!(p.trust_domain, "cluster.local");
    assert_eq!(p.limits, config::Limits::default());
    assert_eq!(p.retries, config::Retries::default());
    assert_eq!(p.outlier_detection, config::OutlierDetection::default());
    assert_eq!(p.access_log, config::AccessLog::Off);
    let grpc = &p.services["grpc-echo"];
    assert_eq!(grpc.protocol, config::Protocol::H2);
    assert!(grpc.tls.is_none());
    assert_eq!(grpc.endpoints.len(), 1);
    assert_eq!(
        p.services["my-website-v1"].protocol,
        config::Protocol::Http1
    );
    assert_eq!(
        weights(&cfg, "my-trafficsplit"),
        w(&[("my-website-v1", 90), ("my-website-v2", 10)])
    );
}

#[test]
fn a_tls_file_that_is_a_folder_or_a_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), "x").unwrap();
    for cert in ["certs", "/dev/zero"] {
        let yaml = PROXY.replace(
            "  admin: 127.0.0.1:0",
            &format!("  admin: 127.0.0.1:0\n  tls:\n    cert: {cert}\n    key: server-key.pem"),
        );
        std::fs::write(dir.path().join("proxy.yaml"), yaml).unwrap();
        let errors: Vec<String> = config::load(dir.path())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "{cert}: {errors:#?}");
        assert!(
            errors[0].contains("document 1 (Proxy gateway): spec.tls.cert: ")
                && errors[0].ends_with("is not a regular file"),
            "{cert}: {errors:#?}"
        );
    }
}
