//! Gateway API HTTPRoutes in the table: the compiled match a request walks, and the
//! precedence order the specification gives them, decided once per table build.
//!
//! One host key (an exact hostname, a `*.` wildcard, or "no hostnames") holds every
//! (route, rule, match) that applies to its hosts, sorted: routes of the exact name, then
//! of the longest wildcard, then routes without hostnames (the specification's hostname
//! precedence); within those, an Exact path, the longest PathPrefix, RegularExpression
//! paths, a method match, most header matches, most query matches, the oldest route,
//! `{namespace}/{name}`, rule order, match order. A request takes the first that accepts.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method};

use crate::config::{Config, GatewayMatch, HttpRoute, PathMatch, ValueMatch};

use super::Split;

/// One (route, rule, match) of a host, in precedence order within its `Route`.
pub struct RuleEntry {
    pub(super) matcher: GatewayMatch,
    pub(super) split: Arc<Split>,
}

impl GatewayMatch {
    /// Every condition holds: path (normalised), method, headers, query parameters.
    #[inline]
    pub fn accepts(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            // element-wise: `/foo` takes `/foo`, `/foo/` and `/foo/bar`, never `/foobar`
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| want.matches(v)))
        });
        headers_ok
            && self
                .query
                .iter()
                .all(|(name, want)| query_value(query, name).is_some_and(|v| want.matches(v)))
    }
}

impl ValueMatch {
    #[inline]
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(re) => re.is_match(value),
        }
    }
}

/// The first value of query parameter `name` (as written, not percent-decoded).
#[inline]
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Where a host key stands for a route: `None` when the route does not apply to it.
/// Smaller is stronger: exact name, then the longest wildcard, then no hostnames.
fn host_rank(key: &str, route: &HttpRoute) -> Option<(u8, Reverse<usize>)> {
    if route.hostnames.is_empty() {
        return Some((2, Reverse(0)));
    }
    if key.is_empty() {
        return None;
    }
    let (key_suffix, key_is_wildcard) = match key.strip_prefix("*.") {
        Some(s) => (s, true),
        None => (key, false),
    };
    if !key_is_wildcard && route.hostnames.iter().any(|h| h == key) {
        return Some((0, Reverse(key.len())));
    }
    // a wildcard `*.S` of the route covers the key when every host of the key ends in `.S`
    route
        .hostnames
        .iter()
        .filter_map(|h| h.strip_prefix("*."))
        .filter(|s| {
            if key_is_wildcard {
                key_suffix == *s || key_suffix.ends_with(&format!(".{s}"))
            } else {
                key.len() > s.len() + 1 && key.ends_with(&format!(".{s}"))
            }
        })
        .map(str::len)
        .max()
        .map(|len| (1, Reverse(len)))
}

/// Precedence among the matches of one host key (see the module documentation).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Precedence<'c> {
    host: (u8, Reverse<usize>),
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// Routes with a creation time first, oldest first.
    created: (bool, Option<SystemTime>),
    namespace: &'c str,
    name: &'c str,
    rule: usize,
    index: usize,
}

/// Every host key of the configuration's HTTPRoutes with its entries in precedence
/// order. `splits[r][q]` is the split of rule `q` of route `r`. Keys: an exact name, `*.`
/// and a suffix, or `""` for the routes without hostnames.
pub(super) fn host_entries(
    config: &Config,
    splits: &[Vec<Arc<Split>>],
) -> Vec<(String, Vec<RuleEntry>)> {
    let mut keys: Vec<&str> = Vec::new();
    for r in &config.httproutes {
        if r.hostnames.is_empty() && !keys.contains(&"") {
            keys.push("");
        }
        for h in &r.hostnames {
            if !keys.contains(&h.as_str()) {
                keys.push(h);
            }
        }
    }
    keys.into_iter()
        .map(|key| {
            let mut ranked: Vec<(Precedence, RuleEntry)> = Vec::new();
            for (ri, route) in config.httproutes.iter().enumerate() {
                let Some(host) = host_rank(key, route) else {
                    continue;
                };
                for (qi, rule) in route.rules.iter().enumerate() {
                    for (mi, m) in rule.matches.iter().enumerate() {
                        let (path_kind, path_len) = match &m.path {
                            PathMatch::Exact(p) => (0, p.len()),
                            PathMatch::Prefix(p) => (1, p.len()),
                            PathMatch::Regex(_) => (2, 0),
                        };
                        let precedence = Precedence {
                            host,
                            path_kind,
                            path_len: Reverse(path_len),
                            no_method: m.method.is_none(),
                            headers: Reverse(m.headers.len()),
                            query: Reverse(m.query.len()),
                            created: (route.created.is_none(), route.created),
                            namespace: &route.namespace,
                            name: &route.name,
                            rule: qi,
                            index: mi,
                        };
                        ranked.push((
                            precedence,
                            RuleEntry {
                                matcher: m.clone(),
                                split: splits[ri][qi].clone(),
                            },
                        ));
                    }
                }
            }
            ranked.sort_by(|a, b| a.0.cmp(&b.0));
            (
                key.to_string(),
                ranked.into_iter().map(|(_, e)| e).collect(),
            )
        })
        .collect()
}

/// A match as people write it: `PathPrefix /foo, header x=y, GET`.
pub fn describe_match(m: &GatewayMatch) -> String {
    let mut out = match &m.path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) if p.is_empty() => "PathPrefix /".to_string(),
        PathMatch::Prefix(p) => format!("PathPrefix {p}"),
        PathMatch::Regex(re) => format!("RegularExpression {}", unanchored(re.as_str())),
    };
    let value = |v: &ValueMatch| match v {
        ValueMatch::Exact(v) => format!("={v}"),
        ValueMatch::Regex(re) => format!("~{}", unanchored(re.as_str())),
    };
    if let Some(method) = &m.method {
        let _ = write!(out, ", method {method}");
    }
    for (name, v) in &m.headers {
        let _ = write!(out, ", header {name}{}", value(v));
    }
    for (name, v) in &m.query {
        let _ = write!(out, ", query {name}{}", value(v));
    }
    out
}

/// A pattern as written, without the anchors validation added.
fn unanchored(re: &str) -> &str {
    re.strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(re)
}

impl RuleEntry {
    pub fn split(&self) -> &Arc<Split> {
        &self.split
    }

    pub fn matcher(&self) -> &GatewayMatch {
        &self.matcher
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        assert_eq!(query_value(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(query_value(Some("flag&b=2"), "flag"), Some(""));
        assert_eq!(query_value(Some("ab=1"), "a"), None);
        assert_eq!(query_value(None, "a"), None);
    }
}
