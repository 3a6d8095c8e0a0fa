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
//! types by apiVersion and kind), `oam` (TrafficSplits declared as OAM traits, handed to
//! the loader as the TrafficSplits they stand for), `raw` (the serde mirrors), `values`
//! (scalar forms), `validate` (one module per kind), `model` (the validated types), `error`.

mod error;
mod files;
mod loader;
mod model;
mod oam;
pub mod raw;
mod validate;
pub mod values;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{file_error, ConfigError, EmbeddedShape, Embedding, Origin};
pub use files::{config_files, is_config_file_name};
pub use model::{
    AccessLog, AccessMode, BackendTarget, ClientAuth, Config, GatewayBackend, GatewayMatch,
    GatewayRule, HttpMatch, HttpRoute, HttpRouteGroup, Limits, OutlierDetection, PathMatch,
    Protocol, Proxy, Retries, Selection, Service, ShutdownSettings, SplitBackend, StickyKey,
    Timeouts, TlsSettings, TrafficSplit, TrafficTarget, UpstreamTls, ValueMatch,
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

/// One read of the configuration at `path`: the result, and what is known of it whatever
/// the result (a reload logs the warnings once and watches the named files).
pub struct Read {
    pub result: Result<Config, Vec<ConfigError>>,
    /// Plain HTTP, skipped documents, ...: not logged yet.
    pub warnings: Vec<String>,
    /// The files the documents name (TLS material), found or not.
    pub named_files: Vec<PathBuf>,
}

impl Read {
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
    }
}

/// Load and validate the configuration at `path` (a file or a folder of `*.yaml`/`*.yml`),
/// logging its warnings.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let read = read(path);
    read.log_warnings();
    read.result
}

/// As `load`, with the warnings returned instead of logged.
pub fn read(path: &Path) -> Read {
    let files = match config_files(path) {
        Ok(files) => files,
        Err(e) => {
            return Read {
                result: Err(vec![*e]),
                warnings: Vec::new(),
                named_files: Vec::new(),
            }
        }
    };
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

/// As `read`, for the text of one file already in memory (fuzzing, tests): `path` need
/// not exist; it names the file in errors, and TLS file names resolve from its folder.
/// The warnings are dropped.
pub fn load_documents(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut fingerprint = Fingerprint::default();
    let mut loader = Loader::default();
    fingerprint.add_text(path, text);
    loader.parse_file(Arc::from(path), text);
    finish(path, fingerprint, loader).result
}

/// Validate what was read and fingerprint it with the files it names.
fn finish(path: &Path, mut fingerprint: Fingerprint, loader: Loader) -> Read {
    let mut notes = validate::Notes {
        warnings: loader.warnings,
        named_files: Vec::new(),
    };
    let result = validate::validate(path, loader.docs, loader.errors, &mut notes).map(|valid| {
        // TLS files are part of the configuration: a rotated certificate is a change.
        for file in &notes.named_files {
            fingerprint.add_file(file);
        }
        Config {
            path: path.to_path_buf(),
            files: notes.named_files.clone(),
            fingerprint: fingerprint.finish(),
            warnings: notes.warnings.clone(),
            proxy: valid.proxy,
            splits: valid.splits,
            route_groups: valid.route_groups,
            targets: valid.targets,
            httproutes: valid.httproutes,
        }
    });
    Read {
        result,
        warnings: notes.warnings,
        named_files: notes.named_files,
    }
}
