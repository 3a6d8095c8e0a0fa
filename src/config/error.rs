//! What a configuration error says, and where it points: file, document, object, field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One problem in the configuration, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based index of the document within its file.
    pub document: Option<usize>,
    /// `(kind, name)` of the object when known.
    pub object: Option<(String, String)>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some((kind, name)) = &self.object {
            write!(f, " ({kind} {name})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Where an object came from: file, document index and object name, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<Path>,
    pub document: usize,
    pub kind: &'static str,
    pub name: String,
}

impl Origin {
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError {
            file: self.file.to_path_buf(),
            document: Some(self.document),
            object: Some((self.kind.to_string(), self.name.clone())),
            field: (!field.is_empty()).then_some(field),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)
    }
}

/// An error about a whole file (unreadable, not a config folder), before any document.
pub fn file_error(file: &Path, reason: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        document: None,
        object: None,
        field: None,
        reason,
    }
}
