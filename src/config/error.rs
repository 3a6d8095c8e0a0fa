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
    /// Set when the object is embedded in the document (a TrafficSplit declared as an OAM
    /// trait): `kind` and `name` are then the outer document's, and field paths are
    /// rewritten to where the fields are written in it.
    pub within: Option<Arc<Embedding>>,
}

/// Where an embedded object sits in its document, and how its fields map onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedding {
    /// The path of the embedded object, e.g. `spec.components[0] (component web).traits[1].trait`.
    pub at: String,
    pub shape: EmbeddedShape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedShape {
    /// The whole object is written at `at` (an `ApplicationConfiguration` trait):
    /// `spec.service` is `<at>.spec.service`.
    Whole,
    /// Only the spec's fields are written at `at` (KubeVela trait `properties`):
    /// `spec.service` is `<at>.service`, and `metadata.*` is the outer document's own.
    Spec,
}

impl Embedding {
    /// The outer document's path of the embedded object's field `inner`.
    pub fn field(&self, inner: &str) -> String {
        let at = &self.at;
        match self.shape {
            EmbeddedShape::Whole if inner.is_empty() => at.clone(),
            EmbeddedShape::Whole => format!("{at}.{inner}"),
            EmbeddedShape::Spec => {
                if inner.is_empty() || inner == "spec" {
                    at.clone()
                } else if let Some(rest) = inner.strip_prefix("spec.") {
                    format!("{at}.{rest}")
                } else if inner.starts_with("metadata.") {
                    inner.to_string()
                } else {
                    format!("{at}.{inner}")
                }
            }
        }
    }
}

impl Origin {
    /// Name the object once its name is known; an embedded object's errors keep naming
    /// the document it is written in.
    pub fn set_object_name(&mut self, name: impl Into<String>) {
        if self.within.is_none() {
            self.name = name.into();
        }
    }

    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        let mut field = field.into();
        if let Some(within) = &self.within {
            field = within.field(&field);
        }
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
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(within) = &self.within {
            write!(f, " ({} {}) {}", self.kind, self.name, within.at)?;
        }
        Ok(())
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
