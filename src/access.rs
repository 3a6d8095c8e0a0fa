//! SMI access policy for `access: enforce`: deny by default; a caller may reach a split
//! when a `TrafficTarget` whose destination is the split's ServiceAccount lists the
//! caller's ServiceAccount among its sources and one of its rules accepts the request.
//!
//! Compiled per split when the routing table is built (regexes included), so a request
//! only compares two short strings per source and runs the rule matchers.

use http::{HeaderMap, Method};

use crate::config::{Config, HttpMatch, TrafficSplit};
use crate::identity::Identity;

/// A caller's Kubernetes identity: (namespace, ServiceAccount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub namespace: String,
    pub service_account: String,
}

impl Principal {
    /// From a SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, else from an OSM-style
    /// certificate CN `<sa>.<ns>.<trust-domain>`.
    pub fn from_identity(id: &Identity) -> Option<Principal> {
        if let Some(uri) = &id.spiffe {
            let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
            let parts: Vec<&str> = path.split('/').collect();
            if let ["ns", ns, "sa", sa] = parts.as_slice() {
                return Some(Principal {
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                });
            }
            return None;
        }
        let cn = id.cn.as_deref()?;
        let mut labels = cn.splitn(3, '.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(sa), Some(ns), Some(domain))
                if !sa.is_empty() && !ns.is_empty() && !domain.is_empty() =>
            {
                Some(Principal {
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// One TrafficTarget's permission for one split.
#[derive(Debug, Clone)]
struct Grant {
    /// (namespace, ServiceAccount) of each allowed source.
    sources: Vec<(String, String)>,
    /// The request must match one of these; `None`: any request.
    matches: Option<Vec<HttpMatch>>,
}

/// Who may call one split.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: Vec<Grant>,
}

impl Policy {
    /// The grants of every TrafficTarget whose destination is the split's ServiceAccount
    /// in the split's namespace.
    pub fn compile(split: &TrafficSplit, config: &Config) -> Policy {
        let destination = (split.namespace.as_str(), split.service_account.as_str());
        let grants = config
            .targets
            .iter()
            .filter(|t| (t.destination.0.as_str(), t.destination.1.as_str()) == destination)
            .map(|t| {
                let matches = if t.rules.is_empty() {
                    None
                } else {
                    let mut all = Vec::new();
                    for (group_name, names) in &t.rules {
                        let group = config
                            .route_groups
                            .iter()
                            .find(|g| &g.name == group_name && g.namespace == t.namespace);
                        for m in group.map(|g| g.matches.as_slice()).unwrap_or_default() {
                            // a rule without `matches` allows all of its group
                            if names.is_empty() || names.contains(&m.name) {
                                all.push(m.clone());
                            }
                        }
                    }
                    Some(all)
                };
                Grant {
                    sources: t.sources.clone(),
                    matches,
                }
            })
            .collect();
        Policy { grants }
    }

    pub fn allows(
        &self,
        who: Option<&Principal>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        let Some(who) = who else { return false };
        self.grants.iter().any(|g| {
            g.sources
                .iter()
                .any(|(ns, sa)| *ns == who.namespace && *sa == who.service_account)
                && match &g.matches {
                    None => true,
                    Some(list) => list.iter().any(|m| m.accepts(method, path, headers)),
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_from_spiffe_and_osm_cn() {
        let spiffe = Identity {
            spiffe: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
            ..Default::default()
        };
        assert_eq!(
            Principal::from_identity(&spiffe),
            Some(Principal {
                namespace: "shop".into(),
                service_account: "frontend".into()
            })
        );
        let osm = Identity {
            cn: Some("bookbuyer.bookbuyer.cluster.local".into()),
            ..Default::default()
        };
        assert_eq!(
            Principal::from_identity(&osm),
            Some(Principal {
                namespace: "bookbuyer".into(),
                service_account: "bookbuyer".into()
            })
        );
        let other = Identity {
            spiffe: Some("spiffe://example.org/workload".into()),
            ..Default::default()
        };
        assert_eq!(Principal::from_identity(&other), None);
        assert_eq!(
            Principal::from_identity(&Identity {
                cn: Some("client".into()),
                ..Default::default()
            }),
            None
        );
    }
}
