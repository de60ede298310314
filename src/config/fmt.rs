//! Canonical formatting.

use super::diagnostic::{ConfigErrors, SharedSource, Sink};
use super::syntax;
use super::SourceFile;
use std::sync::Arc;

pub(crate) fn format(source: &SourceFile) -> Result<String, ConfigErrors> {
    let mut sink = Sink {
        files: vec![SharedSource {
            name: Arc::from(source.name.as_str()),
            text: Arc::from(source.text.as_str()),
        }],
        ..Default::default()
    };
    let Some(body) = syntax::parse_file(0, &source.text, &mut sink) else {
        return Err(ConfigErrors::new(sink.errors));
    };
    Ok(body.to_string())
}
