//! `build`: from (desired landscape, discovered landscape) to a checked plan. The recipe is the
//! list of passes below, in FIG. 3 order, then numbering and the invariant check.

use super::diff::Diff;
use super::draft::Draft;
use super::passes::*;
use super::{invariants, Plan, PlanError};
use crate::model::{Landscape, Observed};

/// What to plan: everything, or only some resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Resource addresses (`vm.db`, `secure_link.web_db`, `subnet.app`). Empty: everything.
    /// A target pulls in what it depends on (Terraform semantics).
    pub targets: Vec<String>,
    /// Resource addresses left out, with what depends on them.
    pub excludes: Vec<String>,
}

/// The passes, in order. Each one adds the steps of one FIG. 3 block or reshapes the graph.
const PASSES: &[&dyn Pass] = &[
    &BlockPass,               // 320: fail-closed block (source, or target when prestaged)
    &ShutdownPass,            // 325: cold: shut down on the source
    &MigratePass,             // 330: live (arriving paused) or cold migration
    &SubnetTunnelPass,        // 335, 340: tunnel from the routing core when a subnet leaves whole
    &RestartPass,             // 345: resume or start on the target
    &IpsecPass,               // 345: install each needed SA, one step per end
    &ConnectionsPass,         // 355-365: reset unsecured non-managed connections
    &EnablePass,              // 370: re-enable traffic, over the secure link only
    &RouteCheckPass,          // 375-390: wait for the routing core, then remove the tunnel
    &CleanupPass,             // source leftovers and IPsec no longer needed
    &DedupePass,              // shared steps (same key) once
    &TransitiveReductionPass, // direct dependencies only
];

/// Plans the changes that turn `observed` into `desired`. Pure: no I/O.
///
/// Fails when the landscapes do not fit together (a VM discovered nowhere or on two hosts, a
/// host not discovered) or when the plan would break a security invariant (1, 2, 3, 7 of
/// SPEC.md); the refused plan travels in the error so it can be shown.
pub fn build(
    desired: &Landscape,
    observed: &Observed,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    // 310, 315: select the VMs that move and their targets; what each needs.
    let diff = Diff::new(desired, observed, opts)?;
    // About eight steps per move, two per SA end, two per stale item.
    let estimate = diff.moves.len() * 8
        + diff.installs.len() * 2 * 2
        + (diff.stale.len() + diff.stale_tunnels.len()) * 2;
    let mut draft = Draft::with_capacity(estimate, diff.moves.len());
    for pass in PASSES {
        pass.apply(&diff, &mut draft)?;
    }
    // Number the steps in a topological order, each VM's steps together: node index = step
    // number.
    let groups = draft.groups();
    let graph = draft.into_graph(&groups)?;
    let mut plan = Plan {
        graph,
        changes: diff.changes(),
        warnings: diff.warnings.clone(),
        invariants: Default::default(),
        context: diff.context(),
    };
    let report = invariants::check(&plan, desired);
    plan.warnings.extend(report.waivers().map(str::to_string));
    plan.invariants = report;
    if !plan.invariants.holds() {
        return Err(PlanError::InvariantViolated {
            report: Box::new(plan.invariants.clone()),
            plan: Box::new(plan),
        });
    }
    Ok(plan)
}

/// The names of the passes, in order (for documentation and tests).
pub fn pass_names() -> Vec<&'static str> {
    PASSES.iter().map(|p| p.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::synthetic::Fixture;

    #[test]
    fn a_link_naming_no_vm_is_reported_alone_or_with_the_other_errors() {
        let f = Fixture::reference().link("bad", &["web", "ghost"]);
        match build(&f.desired, &f.observed, &PlanOptions::default()) {
            Err(PlanError::UnknownVm { link, vm }) => assert_eq!((&*link, &*vm), ("bad", "ghost")),
            other => panic!("{other:?}"),
        }
        let f = f.vm("lost", "app", "192.168.10.13", "nowhere.h1", "cloud.c1");
        match build(&f.desired, &f.observed, &PlanOptions::default()) {
            Err(PlanError::Multiple { errors }) => {
                assert_eq!(errors.len(), 2, "{errors:?}");
                assert!(matches!(errors[0], PlanError::VmNotDiscovered { .. }));
                assert!(matches!(errors[1], PlanError::UnknownVm { .. }));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_recipe_reads_in_fig_3_order() {
        assert_eq!(
            pass_names(),
            [
                "block",
                "shutdown",
                "migrate",
                "tunnel.add",
                "restart",
                "ipsec.install",
                "connections.secure",
                "enable",
                "route.check",
                "cleanup",
                "dedupe",
                "transitive reduction",
            ]
        );
    }
}
