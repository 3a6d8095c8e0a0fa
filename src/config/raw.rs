//! Serde mirrors of the YAML documents, field for field. Nothing here decides a default
//! or checks a value: `config::validate` does that and names the field when it refuses.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

/// `metadata` of any Kubernetes-style document. Other metadata fields (labels,
/// ownerReferences, ...) are accepted and ignored, as the API server would keep them.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `splitproxy.dev/v1alpha1` `Proxy`: our own kind, so unknown fields are typos and refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    /// Accepted for the Kubernetes shape; the object name is read from the raw document.
    #[allow(dead_code)]
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: ProxySpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxySpec {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub tls: Option<Tls>,
    pub access: Option<String>,
    pub timeouts: Option<Timeouts>,
    pub shutdown: Option<Shutdown>,
    pub expose_backend: Option<bool>,
    pub trust_domain: Option<String>,
    pub limits: Option<Limits>,
    pub retries: Option<Retries>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `off`, `json`, or YAML `false`: kept raw so validation names the accepted values.
    pub access_log: Option<Value>,
    /// Each a list of endpoints, or a `Service` mapping: decided in validation so that
    /// both shapes get precise errors.
    #[serde(default)]
    pub services: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub endpoints: Vec<String>,
    pub tls: Option<UpstreamTls>,
    /// `http1` (default) or `h2`.
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    pub ca: String,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tls {
    pub cert: String,
    pub key: String,
    #[serde(rename = "clientCA")]
    pub client_ca: Option<String>,
    pub client_auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub connect: Option<String>,
    pub upstream: Option<String>,
    pub client_header: Option<String>,
    pub idle: Option<String>,
}

/// Sizes are kept raw: a number of bytes, or a string such as `32KiB`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    pub request_header_bytes: Option<Value>,
    pub request_headers: Option<u64>,
    pub request_body_bytes: Option<Value>,
    pub connections: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    pub attempts: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_failures: Option<u64>,
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u64>,
    pub base_ejection_time: Option<String>,
    pub max_ejected_percent: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Shutdown {
    pub delay: Option<String>,
    pub grace: Option<String>,
}

/// `split.smi-spec.io` `TrafficSplit`, every version: v1alpha1 weights are quantities,
/// later ones integers; v1alpha3+ add `matches`. Top-level extras (`status`) are ignored.
#[derive(Debug, Deserialize)]
pub struct TrafficSplitDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: TrafficSplitSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitSpec {
    pub service: String,
    pub backends: Vec<SplitBackend>,
    #[serde(default)]
    pub matches: Vec<MatchRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBackend {
    pub service: String,
    /// Kept raw: an integer in v1alpha2+, a Kubernetes quantity (`500m`, `1`) in v1alpha1.
    pub weight: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRef {
    pub kind: String,
    pub name: String,
    #[allow(dead_code)]
    pub api_group: Option<String>,
}

/// `specs.smi-spec.io` `HTTPRouteGroup`: `matches` at the top level in v1alpha1, under
/// `spec` from v1alpha2 on.
#[derive(Debug, Deserialize)]
pub struct HttpRouteGroupDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<HttpRouteGroupSpec>,
    pub matches: Option<Vec<HttpMatch>>,
}

#[derive(Debug, Deserialize)]
pub struct HttpRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: String,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<Headers>,
}

/// Both shapes seen in the wild: `headers: {name: regex}` and `headers: [{name: regex}]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Headers {
    Map(BTreeMap<String, String>),
    List(Vec<BTreeMap<String, String>>),
}

impl Headers {
    pub fn into_pairs(self) -> Vec<(String, String)> {
        match self {
            Headers::Map(m) => m.into_iter().collect(),
            Headers::List(l) => l.into_iter().flatten().collect(),
        }
    }
}

/// `access.smi-spec.io` `TrafficTarget`: v1alpha1 keeps `destination`, `sources` and
/// `specs` at the top level, v1alpha2+ under `spec` (where `specs` became `rules`).
#[derive(Debug, Deserialize)]
pub struct TrafficTargetDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<TrafficTargetSpec>,
    pub destination: Option<IdentityRef>,
    pub sources: Option<Vec<IdentityRef>>,
    pub specs: Option<Vec<RuleRef>>,
}

#[derive(Debug, Deserialize)]
pub struct TrafficTargetSpec {
    pub destination: IdentityRef,
    #[serde(default)]
    pub sources: Vec<IdentityRef>,
    #[serde(default)]
    pub rules: Vec<RuleRef>,
}

#[derive(Debug, Deserialize)]
pub struct IdentityRef {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RuleRef {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub matches: Vec<String>,
}

// === OAM ===

/// `core.oam.dev/v1alpha2` `ApplicationConfiguration`. Only what binds traits to
/// components is read; the rest (scopes, parameterValues, dataInputs, status) is the OAM
/// runtime's business and ignored. Traits stay raw: one that is not a TrafficSplit is
/// skipped with a warning, whatever its shape.
#[derive(Debug, Deserialize)]
pub struct ApplicationConfigurationDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: ApplicationConfigurationSpec,
}

#[derive(Debug, Deserialize)]
pub struct ApplicationConfigurationSpec {
    #[serde(default)]
    pub components: Vec<ApplicationConfigurationComponent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationConfigurationComponent {
    pub component_name: Option<String>,
    /// Instead of `componentName`: a pinned revision of the component.
    pub revision_name: Option<String>,
    /// Each `{trait: <object>, dataOutputs, dataInputs}`.
    #[serde(default)]
    pub traits: Vec<Value>,
}

/// KubeVela `core.oam.dev/v1beta1` `Application`. Policies, workflow and the components'
/// own properties are KubeVela's business and ignored.
#[derive(Debug, Deserialize)]
pub struct KubeVelaApplicationDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: KubeVelaApplicationSpec,
}

#[derive(Debug, Deserialize)]
pub struct KubeVelaApplicationSpec {
    #[serde(default)]
    pub components: Vec<KubeVelaComponent>,
}

#[derive(Debug, Deserialize)]
pub struct KubeVelaComponent {
    #[serde(default)]
    pub name: String,
    /// Each `{type, properties}`.
    #[serde(default)]
    pub traits: Vec<Value>,
}

/// The `properties` of a `traffic-split` (alias `smi-split`) trait: our own trait type,
/// so unknown fields are typos and refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitTraitProperties {
    /// The root service; the component's name when absent.
    pub service: Option<String>,
    pub backends: Vec<SplitBackend>,
}

// === Gateway API ===

/// `gateway.networking.k8s.io` `HTTPRoute` (v1, v1beta1). Every field of the
/// specification is named here so that the ones splitproxy does not implement are
/// refused by name in validation, and anything else (a typo, a newer field) is refused by
/// serde with its path. `status` is written by controllers and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    #[serde(default)]
    pub metadata: GatewayMetadata,
    #[serde(default)]
    pub spec: HttpRouteSpec,
    #[allow(dead_code)]
    #[serde(default)]
    pub status: Option<Value>,
}

/// `metadata` of a Gateway API object: as `Metadata`, plus the creation time that
/// decides precedence between routes with equal matches.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayMetadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Accepted and not needed: splitproxy is the gateway.
    #[allow(dead_code)]
    #[serde(default)]
    pub parent_refs: Option<Value>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// A label for status and policy attachment; nothing to do for the proxy.
    #[allow(dead_code)]
    pub name: Option<String>,
    pub matches: Option<Vec<HttpRouteMatch>>,
    pub filters: Option<Vec<Value>>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<Value>,
    pub retry: Option<Value>,
    pub session_persistence: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<HttpValueMatch>,
    #[serde(default)]
    pub query_params: Vec<HttpValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpValueMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    /// Kept raw for a precise error on a negative or fractional weight.
    pub weight: Option<Value>,
    pub filters: Option<Vec<Value>>,
}
