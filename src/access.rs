//! SMI access policy for `access: enforce`: deny by default; a caller may reach a split
//! when a `TrafficTarget` whose destination is the split's ServiceAccount lists the
//! caller's ServiceAccount among its sources and one of its rules accepts the request.
//!
//! Compiled per split when the routing table is built (regexes included), so a request
//! only compares two short strings per source and runs the rule matchers.
//!
//! A caller outside the proxy's trust domain (`spec.trustDomain`, compared without regard
//! to case) is the principal of no rule: `spiffe://other.org/ns/shop/sa/frontend` is not
//! `shop/frontend` of `cluster.local`. The check is made here, where the policy is
//! evaluated, so a reload that changes the trust domain applies to open connections too.

use http::{HeaderMap, Method};

use crate::config::{Config, HttpMatch, TrafficSplit};
use crate::identity::Identity;

/// A caller's Kubernetes identity: (namespace, ServiceAccount) in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// As the certificate names it; compared without regard to case.
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Principal {
    /// From a SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, else from an OSM-style
    /// certificate CN `<sa>.<ns>.<trust-domain>`.
    pub fn from_identity(id: &Identity) -> Option<Principal> {
        if let Some(uri) = &id.spiffe {
            let (domain, path) = uri.strip_prefix("spiffe://")?.split_once('/')?;
            let parts: Vec<&str> = path.split('/').collect();
            if let ["ns", ns, "sa", sa] = parts.as_slice() {
                if !domain.is_empty() && !ns.is_empty() && !sa.is_empty() {
                    return Some(Principal {
                        trust_domain: domain.to_string(),
                        namespace: ns.to_string(),
                        service_account: sa.to_string(),
                    });
                }
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
                    trust_domain: domain.to_string(),
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
    /// `spec.trustDomain` (lower-case): callers from any other are no rule's principal.
    trust_domain: String,
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
        Policy {
            trust_domain: config.proxy.trust_domain.clone(),
            grants,
        }
    }

    pub fn allows(
        &self,
        who: Option<&Principal>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        let Some(who) = who else { return false };
        if !who.trust_domain.eq_ignore_ascii_case(&self.trust_domain) {
            return false;
        }
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
                trust_domain: "cluster.local".into(),
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
                trust_domain: "cluster.local".into(),
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

    #[test]
    fn callers_of_another_trust_domain_are_no_principal() {
        let policy = Policy {
            trust_domain: "cluster.local".into(),
            grants: vec![Grant {
                sources: vec![("shop".into(), "frontend".into())],
                matches: None,
            }],
        };
        let allows = |id: Identity| {
            let who = Principal::from_identity(&id);
            policy.allows(who.as_ref(), &Method::GET, "/", &HeaderMap::new())
        };
        let spiffe = |uri: &str| Identity {
            spiffe: Some(uri.into()),
            ..Default::default()
        };
        let cn = |cn: &str| Identity {
            cn: Some(cn.into()),
            ..Default::default()
        };
        assert!(allows(spiffe("spiffe://cluster.local/ns/shop/sa/frontend")));
        assert!(allows(spiffe("spiffe://Cluster.LOCAL/ns/shop/sa/frontend")));
        assert!(allows(cn("frontend.shop.cluster.local")));
        assert!(allows(cn("frontend.shop.CLUSTER.local")));
        for other in [
            spiffe("spiffe://example.org/ns/shop/sa/frontend"),
            spiffe("spiffe://cluster.local.evil/ns/shop/sa/frontend"),
            spiffe("spiffe://cluster.local:443/ns/shop/sa/frontend"),
            spiffe("spiffe:///ns/shop/sa/frontend"),
            cn("frontend.shop.example.org"),
            cn("frontend.shop.cluster"),
        ] {
            assert!(!allows(other.clone()), "{other:?}");
        }
    }
}
