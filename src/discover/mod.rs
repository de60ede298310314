//! Discovery: what runs now. The [`Discover`] trait is implemented by the recorded snapshot
//! ([`snapshot::Snapshot`]) and by the real drivers.

pub mod snapshot;

use crate::model::{Landscape, Observed};

/// Why discovery failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DiscoverError {
    /// A host did not answer in time or refused the connection.
    #[error("host {host} is unreachable: {reason}")]
    #[diagnostic(code(smig::discover::unreachable))]
    Unreachable { host: String, reason: String },
    /// The recorded snapshot could not be read or parsed.
    #[error("cannot read the recorded snapshot {path}: {reason}")]
    #[diagnostic(
        code(smig::discover::snapshot),
        help("a snapshot is JSON following schemas/observed.schema.json")
    )]
    Snapshot { path: String, reason: String },
}

/// Reports the landscape that actually runs, for the hosts the configuration names.
#[async_trait::async_trait]
pub trait Discover: Send + Sync {
    async fn discover(&self, landscape: &Landscape) -> Result<Observed, DiscoverError>;
}
