//! Secrets in the config: a value printed as `<redacted>` everywhere, and the one resolver
//! every section uses to take a secret from its value, a file, or an environment variable,
//! with one trimming rule.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// A secret string: printed as `<redacted>` in `Debug` and in `ferry config check`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl Secret {
    /// Whether a value is set.
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

/// A secret from the first of: its value in the config (or the environment variable that
/// overrides it), the file `file` names. The file's trailing newline is not part of the
/// secret; nothing else is trimmed. `key` names the file key in errors.
pub fn resolve(value: &Secret, file: &str, key: &'static str) -> Result<Option<String>, ConfigError> {
    if value.is_set() {
        return Ok(Some(value.0.clone()));
    }
    if file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::Invalid { key, message: format!("cannot read {file:?}: {e}") })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_a_value_or_a_file_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, " spaced secret \n").unwrap();
        let file = file.to_str().unwrap();
        assert_eq!(resolve(&Secret("v".into()), file, "k").unwrap().as_deref(), Some("v"));
        assert_eq!(resolve(&Secret::default(), file, "k").unwrap().as_deref(), Some(" spaced secret "));
        assert_eq!(resolve(&Secret::default(), "", "k").unwrap(), None);
        assert!(resolve(&Secret::default(), "/nonexistent", "x.file").unwrap_err().to_string().contains("x.file"));
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<redacted>");
    }
}
