//! Which files a config path means: the file itself, or a folder's YAML files.

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
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
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
