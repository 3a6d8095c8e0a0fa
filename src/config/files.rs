//! Which files a config path means (the file itself, or a folder's YAML files), reading
//! them, and the fingerprint of everything read.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use super::error::file_error;
use super::ConfigError;

/// The YAML files of a config path: the file itself, or a folder's `*.yaml`/`*.yml`
/// (hidden entries such as a ConfigMap's `..data` skipped), sorted by name.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, Box<ConfigError>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Box::new(file_error(path, format!("cannot read: {e}"))))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Box::new(file_error(path, format!("cannot list folder: {e}"))))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(is_config_file_name) && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Box::new(file_error(
            path,
            "folder has no *.yaml or *.yml files".into(),
        )));
    }
    Ok(files)
}

/// Whether a folder's entry of this name is one of its configuration files: `*.yaml` or
/// `*.yml`, not hidden (editors' swap files, a ConfigMap's `..data`).
pub fn is_config_file_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_str().unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// One YAML file's text.
pub(super) fn read(file: &Path) -> Result<String, Box<ConfigError>> {
    std::fs::read_to_string(file)
        .map_err(|e| Box::new(file_error(file, format!("cannot read: {e}"))))
}

/// A hash of the names and contents of the files a configuration is made of: equal
/// fingerprints mean nothing changed, so a reload can skip an unchanged configuration.
#[derive(Default)]
pub(super) struct Fingerprint(DefaultHasher);

impl Fingerprint {
    /// A YAML file, as read.
    pub fn add_text(&mut self, file: &Path, text: &str) {
        file.hash(&mut self.0);
        text.hash(&mut self.0);
    }

    /// A file the documents name (TLS material). One that cannot be read now is left
    /// out: validation found it, and loading the TLS material reports what is wrong.
    pub fn add_file(&mut self, file: &Path) {
        if let Ok(bytes) = std::fs::read(file) {
            file.hash(&mut self.0);
            bytes.hash(&mut self.0);
        }
    }

    pub fn finish(self) -> u64 {
        self.0.finish()
    }
}
