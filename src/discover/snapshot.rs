//! A recorded discovered landscape, read from a JSON file (`smig plan --observed FILE`).

use super::{Discover, DiscoverError};
use crate::model::{Landscape, Observed, OBSERVED_VERSION};
use std::path::PathBuf;

/// Discovery from a recorded snapshot file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    path: PathBuf,
}

impl Snapshot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Snapshot { path: path.into() }
    }

    /// Parses snapshot text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Observed, DiscoverError> {
        let err = |reason: String| DiscoverError::Snapshot {
            path: origin.to_string(),
            reason,
        };
        let observed: Observed = serde_json::from_str(text)
            .map_err(|e| err(format!("{e} (line {}, column {})", e.line(), e.column())))?;
        if observed.version != OBSERVED_VERSION {
            return Err(err(format!(
                "version {} is not supported (this smig reads version {OBSERVED_VERSION})",
                observed.version
            )));
        }
        Ok(observed)
    }

    pub fn read(&self) -> Result<Observed, DiscoverError> {
        let origin = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| DiscoverError::Snapshot {
            path: origin.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &origin)
    }
}

#[async_trait::async_trait]
impl Discover for Snapshot {
    async fn discover(&self, _landscape: &Landscape) -> Result<Observed, DiscoverError> {
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_snapshot_is_a_clear_error() {
        let e = Snapshot::parse(
            "{\"version\": 1, \"hosts\": {\"a.b\": {\"domans\": {}}}}",
            "x.json",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x.json") && msg.contains("domans"), "{msg}");
        let e = Snapshot::parse("{\"version\": 7}", "x.json").unwrap_err();
        assert!(e.to_string().contains("version 7"));
        assert!(Snapshot::parse("{\"version\": 1", "x.json").is_err());
    }

    #[test]
    fn empty_snapshot_parses() {
        let o = Snapshot::parse("{\"version\": 1}", "x.json").unwrap();
        assert_eq!(o, Observed::empty());
    }
}
