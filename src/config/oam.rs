//! OAM: a TrafficSplit declared as a trait of an application's component, the way the OAM
//! runtime binds OSM's TrafficSplit to an application.
//!
//! - `core.oam.dev/v1alpha2` `ApplicationConfiguration`: `spec.components[].traits[].trait`
//!   embeds a whole `split.smi-spec.io` TrafficSplit (any version read on its own). Its
//!   name is its own `metadata.name`, else the component's name.
//! - KubeVela `core.oam.dev/v1beta1` `Application`: a `spec.components[].traits[]` of type
//!   `traffic-split` (alias `smi-split`) with `properties: {service, backends}`. The split
//!   is named after the component, its root service defaults to the component's name, and
//!   the application's `splitproxy.dev/` annotations apply to it.
//!
//! Either way the split lives in the application's namespace and is handed to the loader
//! as the raw TrafficSplit it stands for, so it is validated, and routes, exactly like one
//! written on its own; its `Origin` names the application and maps field paths back to
//! where they are written (`spec.components[0] (component web).traits[1].trait.spec...`).
//! Every other trait, and a component without traits, is skipped with one warning.

use std::sync::Arc;

use serde_yaml::Value;

use super::error::{EmbeddedShape, Embedding};
use super::loader::{Loader, SPLIT_VERSIONS};
use super::{raw, Origin, DEFAULT_NAMESPACE};

/// KubeVela trait types read as a TrafficSplit.
pub const KUBEVELA_TRAIT_TYPES: &[&str] = &["traffic-split", "smi-split"];

/// KubeVela traits carry integer weights, as TrafficSplit v1alpha2 on.
const KUBEVELA_WEIGHTS_AS: &str = "v1alpha2";

impl Loader {
    pub(super) fn application_configuration(
        &mut self,
        app: &Origin,
        doc: raw::ApplicationConfigurationDoc,
    ) {
        let Some(namespace) = self.application_namespace(app, &doc.metadata) else {
            return;
        };
        for (c, component) in doc.spec.components.into_iter().enumerate() {
            let name = component
                .component_name
                .or(component.revision_name)
                .filter(|n| !n.is_empty());
            let at = component_path(c, name.as_deref());
            if component.traits.is_empty() {
                self.skip(app, &at, "no traits");
                continue;
            }
            for (t, value) in component.traits.into_iter().enumerate() {
                let at = format!("{at}.traits[{t}]");
                let object = match value {
                    Value::Mapping(mut m) => m.remove("trait"),
                    _ => None,
                };
                let Some(object) = object else {
                    self.errors
                        .push(app.error(at, "expected a mapping with a `trait` object"));
                    continue;
                };
                let api_version = str_field(&object, "apiVersion");
                let kind = str_field(&object, "kind");
                let (group, version) = api_version
                    .split_once('/')
                    .unwrap_or(("", api_version.as_str()));
                if (group, kind.as_str()) != ("split.smi-spec.io", "TrafficSplit") {
                    self.skip(
                        app,
                        &at,
                        &format!("trait kind {kind:?} ({api_version}) is not read by splitproxy"),
                    );
                    continue;
                }
                let origin = embedded(app, format!("{at}.trait"), EmbeddedShape::Whole);
                if !SPLIT_VERSIONS.contains(&version) {
                    let supported: Vec<String> = SPLIT_VERSIONS
                        .iter()
                        .map(|v| format!("split.smi-spec.io/{v}"))
                        .collect();
                    self.errors.push(origin.error(
                        "apiVersion",
                        format!(
                            "unsupported version {api_version:?} (supported: {})",
                            supported.join(", ")
                        ),
                    ));
                    continue;
                }
                let version = version.to_string();
                let Some(mut split) = self.deserialize::<raw::TrafficSplitDoc>(&origin, object)
                else {
                    continue;
                };
                // The OAM runtime would make up a hashed name; the component's is stable.
                // Without either, the split's own validation says metadata.name is required.
                if split
                    .metadata
                    .name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .is_none()
                {
                    split.metadata.name = name.clone();
                }
                if let Some(ns) = split.metadata.namespace.as_deref() {
                    if ns != namespace {
                        self.warnings.push(format!(
                            "{}: {}.trait.metadata.namespace: {ns:?} ignored: a trait lives in its application's namespace {namespace:?}",
                            describe(app),
                            at
                        ));
                    }
                }
                split.metadata.namespace = Some(namespace.clone());
                self.docs.splits.push((origin, version, split));
            }
        }
    }

    pub(super) fn kubevela_application(&mut self, app: &Origin, doc: raw::KubeVelaApplicationDoc) {
        let Some(namespace) = self.application_namespace(app, &doc.metadata) else {
            return;
        };
        for (c, component) in doc.spec.components.into_iter().enumerate() {
            let name = (!component.name.is_empty()).then_some(component.name);
            let at = component_path(c, name.as_deref());
            if component.traits.is_empty() {
                self.skip(app, &at, "no traits");
                continue;
            }
            for (t, value) in component.traits.into_iter().enumerate() {
                let at = format!("{at}.traits[{t}]");
                let Value::Mapping(mut map) = value else {
                    self.errors
                        .push(app.error(at, "expected a mapping with type and properties"));
                    continue;
                };
                let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
                if !KUBEVELA_TRAIT_TYPES.contains(&kind) {
                    let why = format!(
                        "trait type {kind:?} is not read by splitproxy (it reads {})",
                        KUBEVELA_TRAIT_TYPES.join(", ")
                    );
                    self.skip(app, &at, &why);
                    continue;
                }
                let Some(name) = name.clone() else {
                    self.errors.push(app.error(
                        format!("spec.components[{c}].name"),
                        "required: it names the split of the component's traffic-split trait",
                    ));
                    continue;
                };
                let origin = embedded(app, format!("{at}.properties"), EmbeddedShape::Spec);
                let Some(properties) = map.remove("properties").filter(|p| !p.is_null()) else {
                    self.errors
                        .push(origin.error("", "required: the split's service and backends"));
                    continue;
                };
                let Some(props) =
                    self.deserialize::<raw::TrafficSplitTraitProperties>(&origin, properties)
                else {
                    continue;
                };
                let split = raw::TrafficSplitDoc {
                    metadata: kubevela_metadata(&name, &namespace, &doc.metadata),
                    spec: raw::TrafficSplitSpec {
                        service: props.service.unwrap_or_else(|| name.clone()),
                        backends: props.backends,
                        matches: Vec::new(),
                    },
                };
                self.docs
                    .splits
                    .push((origin, KUBEVELA_WEIGHTS_AS.to_string(), split));
            }
        }
    }

    /// The application's namespace; `None` (and an error) when it has no name, which
    /// every message about its traits needs.
    fn application_namespace(&mut self, app: &Origin, meta: &raw::Metadata) -> Option<String> {
        if app.name.is_empty() {
            let mut unnamed = app.clone();
            unnamed.name = "(unnamed)".into();
            self.errors.push(unnamed.error("metadata.name", "required"));
            return None;
        }
        Some(
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        )
    }

    fn skip(&mut self, app: &Origin, at: &str, why: &str) {
        self.warnings
            .push(format!("{}: {at}: skipped: {why}", describe(app)));
    }
}

/// The metadata of the split a KubeVela trait stands for: the component's name, the
/// application's namespace and annotations (the `splitproxy.dev/` extensions).
fn kubevela_metadata(name: &str, namespace: &str, app: &raw::Metadata) -> raw::Metadata {
    raw::Metadata {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        annotations: app.annotations.clone(),
    }
}

/// `spec.components[0] (component web)`: the index locates it, the name is what people
/// recognise.
fn component_path(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("spec.components[{index}] (component {name})"),
        None => format!("spec.components[{index}]"),
    }
}

fn embedded(app: &Origin, at: String, shape: EmbeddedShape) -> Origin {
    Origin {
        within: Some(Arc::new(Embedding { at, shape })),
        ..app.clone()
    }
}

/// `file: document N (Kind name)`, as an error about the application starts.
fn describe(app: &Origin) -> String {
    format!(
        "{}: document {} ({} {})",
        app.file.display(),
        app.document,
        app.kind,
        app.name
    )
}

fn str_field(object: &Value, key: &str) -> String {
    object
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_fields_map_to_where_they_are_written() {
        let whole = Embedding {
            at: "spec.components[0] (component web).traits[1].trait".into(),
            shape: EmbeddedShape::Whole,
        };
        assert_eq!(
            whole.field("spec.backends[0].weight"),
            "spec.components[0] (component web).traits[1].trait.spec.backends[0].weight"
        );
        assert_eq!(whole.field(""), whole.at);
        let spec = Embedding {
            at: "spec.components[0] (component web).traits[0].properties".into(),
            shape: EmbeddedShape::Spec,
        };
        assert_eq!(
            spec.field("spec.backends[1].service"),
            "spec.components[0] (component web).traits[0].properties.backends[1].service"
        );
        assert_eq!(spec.field("spec"), spec.at);
        assert_eq!(
            spec.field("backends[0]"),
            format!("{}.backends[0]", spec.at)
        );
        // the application's own annotations
        assert_eq!(
            spec.field("metadata.annotations.splitproxy.dev/selection"),
            "metadata.annotations.splitproxy.dev/selection"
        );
    }
}
