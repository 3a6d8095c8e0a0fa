//! `TrafficTarget` documents (`access.smi-spec.io`): who may call which ServiceAccount,
//! with which HTTPRouteGroup rules, under `access: enforce`.

use super::Validator;
use crate::config::{raw, HttpRouteGroup, Origin, TrafficTarget, DEFAULT_NAMESPACE};

impl Validator {
    pub(super) fn target(
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
