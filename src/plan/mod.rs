//! Planning: from (desired landscape, discovered landscape) to a DAG of steps. Pure: no I/O,
//! no tokio, no drivers.

pub mod build;
mod diff;
mod draft;
pub mod error;
pub mod facts;
pub mod invariants;
mod passes;
pub mod step;
pub mod synthetic;

pub use build::{build, PlanOptions};
pub use error::PlanError;
pub use invariants::{InvariantReport, InvariantResult};
pub use step::*;

use crate::model::{HostId, Name};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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
    /// The security invariants checked on the DAG, for printing with the plan.
    pub invariants: InvariantReport,
    /// What the invariant checker needs beyond the DAG: where VMs run afterwards and which
    /// SAs were already up.
    pub context: PlanContext,
}

impl Plan {
    /// Whether the plan has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// A step as people read it: `enable vm.db @ cloud.c1 (step 7)`, numbered from 1.
    pub fn label(&self, ix: NodeIndex) -> String {
        let s = &self.graph[ix];
        format!(
            "{} {} @ {} (step {})",
            s.kind,
            s.subject,
            s.target,
            ix.index() + 1
        )
    }
}

/// Landscape facts the plan was built against, kept with it for the invariant checker and
/// renderers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlanContext {
    /// The host each VM of the configuration runs on once the plan is applied.
    pub placements: BTreeMap<Name, HostId>,
    /// IPsec SAs discovered up (both ends) when the plan was made.
    pub established: BTreeSet<SaPair>,
    /// Moving VMs with unsecured non-managed connections: each needs connections.secure
    /// before it is enabled.
    #[serde(default)]
    pub must_secure: BTreeSet<Name>,
}

/// One IPsec SA of a secure_link between two hosts (`a < b`): the unit smig installs.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct SaPair {
    pub link: Name,
    pub a: HostId,
    pub b: HostId,
}

impl SaPair {
    /// The pair for `link` between hosts `x` and `y`, in either order.
    pub fn new(link: &Name, x: &HostId, y: &HostId) -> Self {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        SaPair {
            link: link.clone(),
            a: a.clone(),
            b: b.clone(),
        }
    }
    /// Whether `host` is one end of the pair.
    pub fn has(&self, host: &HostId) -> bool {
        &self.a == host || &self.b == host
    }
}

/// An SA by reference, without cloning names: (link, lower host, higher host); orders like
/// [`SaPair`]. The planner's hot loops key sets and maps with it.
pub(crate) type SaPairRef<'a> = (&'a str, &'a HostId, &'a HostId);

/// The [`SaPairRef`] for `link` between hosts `x` and `y`, in either order.
pub(crate) fn sa_pair_ref<'a>(link: &'a str, x: &'a HostId, y: &'a HostId) -> SaPairRef<'a> {
    if x <= y {
        (link, x, y)
    } else {
        (link, y, x)
    }
}

impl fmt::Display for SaPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secure_link.{} ({} <-> {})", self.link, self.a, self.b)
    }
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
