//! Every configuration example in README.md's "Configuration reference" loads: a whole
//! document (`apiVersion: ...`) beside a Proxy document that defines the services it names,
//! a `services:` fragment inside a Proxy document. The README is what users copy.

use std::path::Path;

use splitproxy::config;

const PROXY: &str = "apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: readme
spec:
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
";

/// The services the README's documents name (the HTTPRoute's `foo-*` refs carry a port:
/// they resolve to cluster DNS names and need none).
const SERVICES: &str = "  services:
    bookstore-v1: [\"127.0.0.1:8081\"]
    bookstore-v2: [\"127.0.0.1:8082\"]
    my-website-v1: [\"127.0.0.1:8083\"]
    my-website-v2: [\"127.0.0.1:8084\"]
";

/// The fenced YAML blocks of the README section that starts with `section`.
fn yaml_blocks(section: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme.find(section).expect("the section");
    let rest = &readme[start + section.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let mut blocks = Vec::new();
    let mut lines = rest[..end].lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```yaml" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n") + "\n");
        }
    }
    blocks
}

/// Load `files` as one configuration folder; TLS files they name exist as placeholders
/// (validation checks that they are files; their contents are the TLS tests' business).
fn load(files: &[(&str, &str)]) -> Result<config::Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for (name, text) in files {
        for pem in text.split_whitespace().filter_map(|w| {
            let w = w.trim_matches(|c: char| c == ',' || c == '}' || c == '"');
            w.strip_prefix("certs/").filter(|w| w.ends_with(".pem"))
        }) {
            std::fs::write(dir.path().join("certs").join(pem), "placeholder").unwrap();
        }
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let read = config::read(dir.path());
    read.result
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

#[test]
fn every_configuration_example_in_the_readme_loads() {
    let blocks = yaml_blocks("## Configuration reference");
    let (mut documents, mut fragments) = (0, 0);
    for block in &blocks {
        if block.starts_with("apiVersion:") {
            documents += 1;
            let proxy = format!("{PROXY}{SERVICES}");
            let cfg = load(&[("a-proxy.yaml", &proxy), ("example.yaml", block)])
                .unwrap_or_else(|e| panic!("README example does not load: {e:#?}\n{block}"));
            assert!(
                !cfg.splits.is_empty() || !cfg.httproutes.is_empty(),
                "README example routes nothing:\n{block}"
            );
        } else if block.starts_with("  services:") {
            fragments += 1;
            let proxy = format!("{PROXY}{block}");
            let cfg = load(&[("proxy.yaml", &proxy)])
                .unwrap_or_else(|e| panic!("README example does not load: {e:#?}\n{block}"));
            assert!(!cfg.proxy.services.is_empty(), "{block}");
        } else {
            panic!("a README yaml block that is neither a document nor a `services:` fragment:\n{block}");
        }
    }
    // the reference shows the HTTPRoute, both OAM kinds and the long service forms
    assert!(documents >= 3, "{documents} documents");
    assert!(fragments >= 2, "{fragments} fragments");
}
