//! `HTTPRouteGroup` documents (`specs.smi-spec.io`): the named request matches that
//! TrafficSplit `matches` and TrafficTarget `rules` refer to.

use regex::Regex;

use super::Validator;
use crate::config::{raw, HttpMatch, HttpRouteGroup, Origin, DEFAULT_NAMESPACE};

impl Validator {
    pub(super) fn route_group(
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
}
