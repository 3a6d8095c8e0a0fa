//! Text about a table for people: what `validate` prints, and what a reload changed.

use std::fmt::Write as _;

use crate::config::{Config, TrafficSplit};

use super::RoutingTable;

impl RoutingTable {
    /// Human-readable table, as `validate` prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let p = &self.config.proxy;
        let tls = match &p.tls {
            Some(t) => format!("mTLS, clientAuth {}", t.client_auth.name()),
            None => "plain HTTP".into(),
        };
        let access = format!("{:?}", p.access).to_lowercase();
        let _ = writeln!(
            out,
            "listen {} ({tls}), admin {}, access {access}",
            p.listen, p.admin
        );
        let od = &p.outlier_detection;
        let count = |n: u32, what: &str| match n {
            0 => format!("{what} off"),
            n => format!("{n} {what}"),
        };
        let _ = writeln!(
            out,
            "retries {}; outlier detection: {}, {}, ejection {} (x the number of ejections), at most {}% ejected",
            p.retries.attempts,
            count(od.consecutive_failures, "consecutive failures"),
            count(od.consecutive_5xx, "consecutive 5xx"),
            humantime::format_duration(od.base_ejection_time),
            od.max_ejected_percent
        );
        for s in self.splits.iter() {
            let src = s.source();
            if let Some((route, i)) = s.gateway() {
                let hosts = if route.hostnames.is_empty() {
                    "every host nothing else routes".to_string()
                } else {
                    route.hostnames.join(", ")
                };
                let _ = writeln!(
                    out,
                    "\nhttproute {}/{} rules[{i}] ({hosts})",
                    route.namespace, route.name
                );
                for m in &route.rules[i].matches {
                    let _ = writeln!(out, "  when {}", super::gateway::describe_match(m));
                }
            } else {
                let _ = writeln!(
                    out,
                    "\nsplit {}/{} ({})",
                    src.namespace,
                    src.name,
                    src.hosts.join(", ")
                );
            }
            if !s.matches.is_empty() {
                let names: Vec<&str> = s.matches.iter().map(|m| m.name.as_str()).collect();
                let _ = writeln!(out, "  when request matches: {}", names.join(", "));
            }
            let total = s.total_weight();
            for b in s.backends.iter() {
                let share = if total == 0 {
                    0.0
                } else {
                    100.0 * b.weight as f64 / total as f64
                };
                let endpoints = if b.unresolved {
                    "unresolvable: its share is answered 500".to_string()
                } else {
                    b.endpoints.describe()
                };
                let _ = writeln!(
                    out,
                    "  -> {:<24} weight {:<8} {:>6.2}%  {}",
                    b.service, b.weight, share, endpoints
                );
            }
            if total == 0 && s.gateway().is_some() {
                let _ = writeln!(
                    out,
                    "  no backendRef with a weight above 0: requests get 500"
                );
            } else if total == 0 {
                let _ = match &s.fallback {
                    Some(f) => writeln!(
                        out,
                        "  all weights are 0: traffic goes to the root service {} {}",
                        f.service,
                        f.endpoints.describe()
                    ),
                    None => writeln!(
                        out,
                        "  all weights are 0 and spec.services has no {}: requests get 503",
                        src.service
                    ),
                };
            }
        }
        if self.splits.is_empty() {
            let _ = writeln!(
                out,
                "\nno TrafficSplit or HTTPRoute: every request gets 404"
            );
        }
        out
    }
}

/// One line per change between two configurations' splits, for the reload log.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let key = |s: &TrafficSplit| format!("{}/{}", s.namespace, s.name);
    let weights = |s: &TrafficSplit| {
        s.backends
            .iter()
            .map(|b| format!("{}={}", b.service, b.weight))
            .collect::<Vec<_>>()
            .join(",")
    };
    for n in &new.splits {
        match old.splits.iter().find(|o| key(o) == key(n)) {
            None => out.push(format!("split {} added ({})", key(n), weights(n))),
            Some(o) if weights(o) != weights(n) || o.service != n.service => out.push(format!(
                "split {}: {} -> {}",
                key(n),
                weights(o),
                weights(n)
            )),
            Some(_) => {}
        }
    }
    for o in &old.splits {
        if !new.splits.iter().any(|n| key(n) == key(o)) {
            out.push(format!("split {} removed", key(o)));
        }
    }
    // each HTTPRoute rule as its split (`<namespace>/<route>/rules[<i>]`)
    let rules = |c: &Config| -> Vec<(String, String)> {
        c.httproutes
            .iter()
            .flat_map(|r| r.rules.iter().map(|q| (key(&q.split), weights(&q.split))))
            .collect()
    };
    let (old_rules, new_rules) = (rules(old), rules(new));
    for (k, w) in &new_rules {
        match old_rules.iter().find(|(o, _)| o == k) {
            None => out.push(format!("httproute rule {k} added ({w})")),
            Some((_, ow)) if ow != w => out.push(format!("httproute rule {k}: {ow} -> {w}")),
            Some(_) => {}
        }
    }
    for (k, _) in &old_rules {
        if !new_rules.iter().any(|(n, _)| n == k) {
            out.push(format!("httproute rule {k} removed"));
        }
    }
    if old.proxy.services != new.proxy.services {
        out.push("services changed".into());
    }
    out
}
