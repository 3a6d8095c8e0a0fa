//! YAML text -> documents -> (apiVersion, kind) -> raw serde types. A document of a kind
//! splitproxy does not read is skipped with one warning (collected, not logged: the caller
//! logs a configuration's warnings once); an unsupported version of a kind it reads, or a
//! document that does not deserialize, is an error.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{raw, ConfigError, Origin};

/// The recognised documents of every file read, deserialized into their raw types, each
/// kind in the order read.
#[derive(Default)]
pub(super) struct Documents {
    pub proxies: Vec<(Origin, raw::ProxyDoc)>,
    /// With the version (`v1alpha1`, ...), which decides how weights are read.
    pub splits: Vec<(Origin, String, raw::TrafficSplitDoc)>,
    pub route_groups: Vec<(Origin, raw::HttpRouteGroupDoc)>,
    pub targets: Vec<(Origin, raw::TrafficTargetDoc)>,
    /// Gateway API HTTPRoutes, with the version (`v1`, `v1beta1`).
    pub httproutes: Vec<(Origin, String, raw::HttpRouteDoc)>,
}

#[derive(Default)]
pub(super) struct Loader {
    pub docs: Documents,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

pub(super) const SPLIT_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
const SPECS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];
const ACCESS_VERSIONS: &[&str] = &["v1alpha1", "v1alpha2", "v1alpha3"];
const GATEWAY_VERSIONS: &[&str] = &["v1", "v1beta1"];

impl Loader {
    /// Every document of one file; a YAML syntax error ends the file.
    pub fn parse_file(&mut self, file: Arc<Path>, text: &str) {
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
        let mut skip = |why: String| {
            self.warnings.push(format!(
                "{}: document {document}: skipped: {why}",
                file.display()
            ));
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
            // OAM: TrafficSplits declared as traits of an application's components
            ("core.oam.dev", "ApplicationConfiguration") => {
                ("ApplicationConfiguration", &["v1alpha2"])
            }
            ("core.oam.dev", "Application") => ("Application", &["v1beta1"]),
            ("gateway.networking.k8s.io", "HTTPRoute") => ("HTTPRoute", GATEWAY_VERSIONS),
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
            within: None,
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
        match kind_static {
            "Proxy" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.docs.proxies.push((origin, d));
                }
            }
            "TrafficSplit" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.docs.splits.push((origin, version.to_string(), d));
                }
            }
            "HTTPRouteGroup" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.docs.route_groups.push((origin, d));
                }
            }
            "ApplicationConfiguration" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.application_configuration(&origin, d);
                }
            }
            "Application" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.kubevela_application(&origin, d);
                }
            }
            "HTTPRoute" => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.docs.httproutes.push((origin, version.to_string(), d));
                }
            }
            _ => {
                if let Some(d) = self.deserialize(&origin, value) {
                    self.docs.targets.push((origin, d));
                }
            }
        }
    }

    /// `value` as `T`; a failure is an error naming the field serde stopped at.
    pub(super) fn deserialize<T: DeserializeOwned>(
        &mut self,
        origin: &Origin,
        value: Value,
    ) -> Option<T> {
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
}
