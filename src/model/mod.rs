//! The landscape as data: what the configuration asks for ([`desired`]) and what discovery
//! found running ([`observed`]). Pure types, no I/O.

pub mod desired;
pub mod name;
pub mod observed;
pub mod secret;

pub use desired::*;
pub use name::Name;
pub use observed::*;
pub use secret::Secret;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A host's identity across the landscape: `<environment>.<host>`, e.g. `dc.hv1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostId(pub Name);

impl HostId {
    pub fn new(environment: &str, host: &str) -> Self {
        HostId(Name::from(format!("{environment}.{host}")))
    }
    /// The environment part of the id.
    pub fn environment(&self) -> &str {
        self.0.split_once('.').map_or(self.0.as_str(), |(e, _)| e)
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    /// The host part of the id.
    pub fn host(&self) -> &str {
        self.0.split_once('.').map_or(self.0.as_str(), |(_, h)| h)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
