//! Configuration: one YAML file or a folder of them, each multi-document.
//!
//! ```text
//! files -> YAML documents -> (apiVersion, kind) -> raw serde types (config::raw)
//!       -> validate: defaults, values, cross-references -> Config (this module's types)
//! ```
//!
//! Every error carries the file, the document (numbered from 1 within its file), the
//! object, the field path and the reason; loading goes on after an error so that
//! `validate` can print all of them at once. Nothing downstream sees an `Option` that
//! validation has already decided.
//!
//! One concern per module: `files` (which files a path means), `loader` (documents to raw
//! types by apiVersion and kind), `raw` (the serde mirrors), `values` (scalar forms),
//! `validate` (one module per kind), `model` (the validated types), `error`.

mod error;
mod files;
mod loader;
mod model;
pub mod raw;
mod validate;
pub mod values;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{ConfigError, Origin};
pub use files::config_files;
pub use model::{
    AccessMode, ClientAuth, Config, HttpMatch, HttpRouteGroup, Proxy, Selection, Service,
    ShutdownSettings, SplitBackend, StickyKey, Timeouts, TlsSettings, TrafficSplit, TrafficTarget,
    UpstreamTls,
};
pub use validate::split::host_forms;
pub use values::Endpoint;

use error::file_error;
use loader::Loader;

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const ANNOTATION_PREFIX: &str = "splitproxy.dev/";
/// Annotations this version understands; any other `splitproxy.dev/` key is a typo.
pub const KNOWN_ANNOTATIONS: &[&str] = &[
    "splitproxy.dev/selection",
    "splitproxy.dev/sticky-header",
    "splitproxy.dev/sticky-cookie",
    "splitproxy.dev/service-account",
];

/// Load and validate the configuration at `path` (a file or a folder of `*.yaml`/`*.yml`).
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut loader = Loader::default();
    let files = match config_files(path) {
        Ok(files) => files,
        Err(e) => return Err(vec![*e]),
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                file.hash(&mut hasher);
                text.hash(&mut hasher);
                loader.parse_file(Arc::from(file.as_path()), &text);
            }
            Err(e) => loader
                .errors
                .push(file_error(file, format!("cannot read: {e}"))),
        }
    }
    let mut config = validate::validate(path, loader.docs, loader.errors)?;
    // TLS files are part of the configuration: a rotated certificate is a change.
    if let Some(tls) = &config.proxy.tls {
        for file in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Ok(bytes) = std::fs::read(file) {
                file.hash(&mut hasher);
                bytes.hash(&mut hasher);
            }
            config.files.push(file.clone());
        }
    }
    let upstream_files: Vec<PathBuf> = config
        .proxy
        .services
        .values()
        .filter_map(|s| s.tls.as_ref())
        .flat_map(|t| {
            std::iter::once(t.ca.clone())
                .chain(t.client.iter().flat_map(|(c, k)| [c.clone(), k.clone()]))
        })
        .collect();
    for file in upstream_files {
        if let Ok(bytes) = std::fs::read(&file) {
            file.hash(&mut hasher);
            bytes.hash(&mut hasher);
        }
        config.files.push(file);
    }
    config.fingerprint = hasher.finish();
    Ok(config)
}
