//! A value that must never be printed: pre-shared keys, private key passphrases.

use serde::{Serialize, Serializer};
use std::fmt;

/// The text shown wherever a secret would otherwise appear.
pub const REDACTED: &str = "(sensitive)";

/// A secret string. `Debug`, `Display` and `Serialize` all render [`REDACTED`]; the only way
/// to read the value is [`Secret::expose`], which drivers call at the moment they hand the key
/// to the IPsec daemon.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret's value. Call only where the value leaves smig for the component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_renders_its_value() {
        let s = Secret::new("canary-8d1f");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"(sensitive)\"");
        assert_eq!(s.expose(), "canary-8d1f");
    }
}
