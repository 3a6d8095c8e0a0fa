//! Raw documents -> the validated model: defaults applied, values parsed, cross-references
//! (backends to services, matches and rules to HTTPRouteGroups) resolved. Each kind has
//! its module; every problem is collected, not only the first.

mod access;
mod proxy;
mod routes;
pub(super) mod split;

use std::path::Path;

use super::error::file_error;
use super::loader::Documents;
use super::{Config, ConfigError, HttpRouteGroup};

/// The errors found so far; each kind's validation adds to them.
struct Validator {
    errors: Vec<ConfigError>,
}

/// Validate every document; `errors` are those found while reading them. Fails when
/// anything failed, so that nothing of a rejected configuration takes effect.
pub(super) fn validate(
    path: &Path,
    docs: Documents,
    errors: Vec<ConfigError>,
) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator { errors };
    let mut proxies = docs.proxies.into_iter();
    let proxy_doc = proxies.next();
    if let Some((first, _)) = &proxy_doc {
        for (origin, _) in proxies {
            v.errors
                .push(origin.error("", format!("a second Proxy document; the first is {first}")));
        }
    }
    let proxy = match proxy_doc {
        Some((origin, doc)) => v.proxy(origin, doc),
        None => {
            v.errors.push(file_error(
                path,
                "no Proxy document (apiVersion: splitproxy.dev/v1alpha1, kind: Proxy) found".into(),
            ));
            None
        }
    };
    let route_groups: Vec<HttpRouteGroup> = docs
        .route_groups
        .into_iter()
        .filter_map(|(o, d)| v.route_group(o, d))
        .collect();
    let mut splits = Vec::new();
    for (origin, version, doc) in docs.splits {
        if let Some(split) = v.split(origin, &version, doc, proxy.as_ref(), &route_groups) {
            splits.push(split);
        }
    }
    v.check_duplicate_roots(&splits);
    let targets = docs
        .targets
        .into_iter()
        .filter_map(|(o, d)| v.target(o, d, &route_groups))
        .collect();
    match proxy {
        Some(proxy) if v.errors.is_empty() => Ok(Config {
            path: path.to_path_buf(),
            files: Vec::new(),
            fingerprint: 0,
            proxy,
            splits,
            route_groups,
            targets,
        }),
        _ => Err(v.errors),
    }
}
