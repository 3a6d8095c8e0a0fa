//! `TrafficSplit` documents (`split.smi-spec.io`, every version): root service and its host
//! names, backends and weights, `matches`, and the `splitproxy.dev/` annotations.

use std::collections::HashMap;

use serde_yaml::Value;

use super::Validator;
use crate::config::{
    raw, values, HttpRouteGroup, Origin, Proxy, Selection, SplitBackend, StickyKey, TrafficSplit,
    ANNOTATION_PREFIX, DEFAULT_NAMESPACE, KNOWN_ANNOTATIONS,
};

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

impl Validator {
    pub(super) fn split(
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
            origin.set_object_name("(unnamed)");
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
        let mut sticky_header: Option<http::HeaderName> = None;
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
                    Ok(name) => sticky_header = Some(name),
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
        origin.set_object_name(name.clone());
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
    pub(super) fn check_duplicate_roots(&mut self, splits: &[TrafficSplit]) {
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
