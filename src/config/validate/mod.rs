//! Raw documents -> the validated model: defaults applied, values parsed, cross-references
//! (backends to services, matches and rules to HTTPRouteGroups) resolved. Each kind has
//! its module; every problem is collected, not only the first.

mod access;
mod gateway;
mod proxy;
mod routes;
pub(super) mod split;

use std::path::{Path, PathBuf};

use super::error::file_error;
use super::loader::Documents;
use super::{ConfigError, HttpRoute, HttpRouteGroup, Origin, Proxy, TrafficSplit, TrafficTarget};

/// A valid configuration's documents.
pub(super) struct Validated {
    pub proxy: Proxy,
    pub splits: Vec<TrafficSplit>,
    pub route_groups: Vec<HttpRouteGroup>,
    pub targets: Vec<TrafficTarget>,
    pub httproutes: Vec<HttpRoute>,
}

/// What validation learns of a configuration, valid or not.
#[derive(Default)]
pub(super) struct Notes {
    /// Plain HTTP and the like: for the caller to log, once per configuration.
    pub warnings: Vec<String>,
    /// TLS certificates, keys and CAs, in the order the documents name them, found or
    /// not: their changes are changes of the configuration (a missing one may be the fix).
    pub named_files: Vec<PathBuf>,
}

struct Validator {
    /// The errors found so far; each kind's validation adds to them.
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    named_files: Vec<PathBuf>,
}

impl Validator {
    /// The file `name` (relative to `dir`, the folder of the document naming it), when it
    /// exists; it is part of the configuration either way, so its changes are changes of it.
    fn named_file(
        &mut self,
        origin: &Origin,
        field: impl Into<String>,
        dir: &Path,
        name: &str,
    ) -> Option<PathBuf> {
        let path = dir.join(name);
        self.named_files.push(path.clone());
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Some(path),
            // a folder, or a device such as /dev/zero that the loader would read for ever
            Ok(_) => {
                self.errors
                    .push(origin.error(field, format!("{} is not a regular file", path.display())));
                None
            }
            Err(e) => {
                self.errors
                    .push(origin.error(field, format!("cannot read {}: {e}", path.display())));
                None
            }
        }
    }
}

/// Validate every document; `errors` are those found while reading them. Fails when
/// anything failed, so that nothing of a rejected configuration takes effect; the notes
/// are made either way.
pub(super) fn validate(
    path: &Path,
    docs: Documents,
    errors: Vec<ConfigError>,
    notes: &mut Notes,
) -> Result<Validated, Vec<ConfigError>> {
    let mut v = Validator {
        errors,
        warnings: std::mem::take(&mut notes.warnings),
        named_files: Vec::new(),
    };
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
    let httproutes: Vec<HttpRoute> = docs
        .httproutes
        .into_iter()
        .filter_map(|(o, version, d)| v.http_route(o, &version, d, proxy.as_ref()))
        .collect();
    v.check_host_clash(&splits, &httproutes);
    let targets = docs
        .targets
        .into_iter()
        .filter_map(|(o, d)| v.target(o, d, &route_groups))
        .collect();
    notes.warnings = v.warnings;
    notes.named_files = v.named_files;
    match proxy {
        Some(proxy) if v.errors.is_empty() => Ok(Validated {
            proxy,
            splits,
            route_groups,
            targets,
            httproutes,
        }),
        _ => Err(v.errors),
    }
}
