//! Planning: from (desired landscape, discovered landscape) to a DAG of steps. Pure: no I/O,
//! no tokio, no drivers.

pub mod facts;
pub mod step;

pub use step::*;

use petgraph::graph::DiGraph;
use serde::{Deserialize, Serialize};

/// A plan: the step DAG plus the resource-level changes it makes.
///
/// Node indices are step numbers: the builder adds steps in a topological order, so step `i`
/// depends only on steps `< i`. An edge `a -> b` means `b` runs after `a` succeeded.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub graph: DiGraph<Step, ()>,
    /// Resource-level summary (what a reviewer approves), in address order.
    pub changes: Vec<ResourceChange>,
    /// Things the reviewer must see, e.g. insecure transport explicitly allowed.
    pub warnings: Vec<String>,
}

/// What happens to one resource, Terraform-style: the symbol is the value.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
    /// A VM changes host.
    Move,
}

impl ChangeAction {
    pub fn symbol(self) -> char {
        match self {
            ChangeAction::Create => '+',
            ChangeAction::Update => '~',
            ChangeAction::Delete => '-',
            ChangeAction::Move => '>',
        }
    }
}

/// One changed resource with its discovered (`before`) and desired (`after`) state, as JSON
/// objects with secrets redacted; renderers diff them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceChange {
    /// `vm.db`, `secure_link.web_db`, `subnet.app`.
    pub address: String,
    pub action: ChangeAction,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}
