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

use std::path::Path;
use std::sync::Arc;

pub use error::{file_error, ConfigError, Origin};
pub use files::config_files;
pub use model::{
    AccessMode, ClientAuth, Config, HttpMatch, HttpRouteGroup, Limits, OutlierDetection, Proxy,
    Retries, Selection, Service, ShutdownSettings, SplitBackend, StickyKey, Timeouts, TlsSettings,
    TrafficSplit, TrafficTarget, UpstreamTls,
};
pub use validate::split::host_forms;
pub use values::Endpoint;

use files::Fingerprint;
use loader::Loader;

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
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
    let files = config_files(path).map_err(|e| vec![*e])?;
    let mut fingerprint = Fingerprint::default();
    let mut loader = Loader::default();
    for file in &files {
        match files::read(file) {
            Ok(text) => {
                fingerprint.add_text(file, &text);
                loader.parse_file(Arc::from(file.as_path()), &text);
            }
            Err(e) => loader.errors.push(*e),
        }
    }
    finish(path, fingerprint, loader)
}

/// As `load`, for the text of one file already in memory (fuzzing, tests): `path` need
/// not exist; it names the file in errors, and TLS file names resolve from its folder.
pub fn load_documents(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut fingerprint = Fingerprint::default();
    let mut loader = Loader::default();
    fingerprint.add_text(path, text);
    loader.parse_file(Arc::from(path), text);
    finish(path, fingerprint, loader)
}

/// Validate what was read and fingerprint it with the files it names.
fn finish(
    path: &Path,
    mut fingerprint: Fingerprint,
    loader: Loader,
) -> Result<Config, Vec<ConfigError>> {
    let valid = validate::validate(path, loader.docs, loader.errors)?;
    // TLS files are part of the configuration: a rotated certificate is a change.
    for file in &valid.named_files {
        fingerprint.add_file(file);
    }
    Ok(Config {
        path: path.to_path_buf(),
        files: valid.named_files,
        fingerprint: fingerprint.finish(),
        proxy: valid.proxy,
        splits: valid.splits,
        route_groups: valid.route_groups,
        targets: valid.targets,
    })
}
