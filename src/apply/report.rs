//! The apply report: what changed, time per step, the critical path, and per migration the
//! traffic blackout as smig sees it (from its block to its enable).

use super::walker::{StepStatus, StepTiming};
use crate::plan::{Action, Plan, ResourceChange, StepKind};
use crate::state::journal::Outcome;
use petgraph::graph::NodeIndex;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

/// The report printed at the end of `apply`, `apply --resume` and `rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub apply_id: String,
    pub command: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// Why the apply did not succeed.
    pub error: Option<String>,
    pub changes: Vec<ResourceChange>,
    pub steps: Vec<StepLine>,
    /// Keys of the longest chain of dependent steps, by time spent.
    pub critical_path: Vec<String>,
    pub critical_path_ms: u64,
    pub blackouts: Vec<Blackout>,
    pub rollback: Option<RollbackSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    pub step: usize,
    pub key: String,
    pub status: StepStatus,
    pub duration_ms: u64,
}

/// Time between a VM's block and its enable.
#[derive(Debug, Clone, Serialize)]
pub struct Blackout {
    pub vm: String,
    /// When the VM was blocked (ms since start); `None` when blocked before this run.
    pub blocked_at_ms: Option<u64>,
    /// When its traffic was enabled again; `None` when it was not in this run.
    pub enabled_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Pre-staged: every block let the SA's flows through and the VM arrived running, so
    /// its traffic stopped only for libvirt's switchover (inside `migrate`).
    pub switchover_only: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackSummary {
    pub undone: usize,
    pub stopped_at: Option<String>,
}

impl ApplyReport {
    /// Builds the report from the plan and the timings of this run.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        plan: &Plan,
        apply_id: &str,
        command: &str,
        outcome: Outcome,
        duration_ms: u64,
        error: Option<String>,
        timings: &[StepTiming],
        rollback: Option<RollbackSummary>,
    ) -> Self {
        let g = &plan.graph;
        let key = |i: usize| {
            g.node_weight(NodeIndex::new(i))
                .map_or_else(|| format!("#{i}"), |s| s.key.clone())
        };
        let steps: Vec<StepLine> = timings
            .iter()
            .map(|t| StepLine {
                step: t.step,
                key: key(t.step),
                status: t.status,
                duration_ms: t.finished_ms.saturating_sub(t.started_ms),
            })
            .collect();
        // Critical path over forward steps that ran now.
        let mut dur: HashMap<usize, u64> = HashMap::new();
        let mut fin: HashMap<usize, u64> = HashMap::new();
        for t in timings {
            if matches!(
                t.status,
                StepStatus::Done | StepStatus::Skipped | StepStatus::Failed
            ) {
                dur.insert(t.step, t.finished_ms.saturating_sub(t.started_ms));
                fin.insert(t.step, t.finished_ms);
            }
        }
        let order = petgraph::algo::toposort(g, None).unwrap_or_default();
        let mut best: HashMap<usize, (u64, Option<usize>)> = HashMap::new();
        for n in &order {
            let i = n.index();
            let (pred_len, pred) = g
                .neighbors_directed(*n, petgraph::Direction::Incoming)
                .map(|p| (best.get(&p.index()).map_or(0, |b| b.0), Some(p.index())))
                .max_by_key(|x| x.0)
                .unwrap_or((0, None));
            best.insert(i, (pred_len + dur.get(&i).copied().unwrap_or(0), pred));
        }
        let mut critical_path = Vec::new();
        let mut critical_path_ms = 0;
        let ran_forward = !dur.is_empty();
        if let Some((&end, &(len, _))) = best
            .iter()
            .filter(|_| ran_forward)
            .max_by_key(|(i, b)| (b.0, Reverse(**i)))
        {
            critical_path_ms = len;
            let mut cur = Some(end);
            while let Some(i) = cur {
                critical_path.push(key(i));
                cur = best.get(&i).and_then(|b| b.1);
            }
            critical_path.reverse();
        }
        // Blackouts per migrated VM.
        let mut blackouts = Vec::new();
        let migrated: Vec<&str> = g
            .node_weights()
            .filter(|s| s.kind == StepKind::Migrate)
            .map(|s| s.subject.as_str())
            .collect();
        for subject in migrated {
            let at = |kind: StepKind, pick: fn(u64, u64) -> u64| {
                g.node_indices()
                    .filter(|n| g[*n].kind == kind && g[*n].subject == subject)
                    .filter_map(|n| fin.get(&n.index()).copied())
                    .reduce(pick)
            };
            // A filter letting the SA's flows through (pre-staged) does not cut the traffic.
            let full_blocks: Vec<usize> = g
                .node_indices()
                .filter(|n| g[*n].kind == StepKind::Block && g[*n].subject == subject)
                .filter(|n| {
                    !matches!(
                        g[*n].action,
                        Action::Block {
                            allow_ipsec: true,
                            ..
                        }
                    )
                })
                .map(|n| n.index())
                .collect();
            let switchover_only = full_blocks.is_empty()
                && g.node_weights()
                    .any(|s| s.subject == subject && s.action.arrives_running().is_some());
            let blocked = full_blocks
                .iter()
                .filter_map(|i| fin.get(i).copied())
                .reduce(u64::min);
            let enabled = at(StepKind::Enable, u64::max);
            if blocked.is_none() && enabled.is_none() {
                continue;
            }
            blackouts.push(Blackout {
                vm: subject.strip_prefix("vm.").unwrap_or(subject).to_string(),
                blocked_at_ms: blocked,
                enabled_at_ms: enabled,
                duration_ms: blocked.zip(enabled).map(|(b, e)| e.saturating_sub(b)),
                switchover_only,
            });
        }
        ApplyReport {
            apply_id: apply_id.to_string(),
            command: command.to_string(),
            outcome,
            duration_ms,
            error,
            changes: plan.changes.clone(),
            steps,
            critical_path,
            critical_path_ms,
            blackouts,
            rollback,
        }
    }
}

use std::cmp::Reverse;

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled back",
            Outcome::Halted => "halted (fail closed)",
            Outcome::Interrupted => "interrupted",
        };
        writeln!(
            f,
            "{} {}: {outcome} in {} ms",
            self.command, self.apply_id, self.duration_ms
        )?;
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        if !self.changes.is_empty() {
            writeln!(f, "Changes:")?;
            for c in &self.changes {
                writeln!(f, "  {} {}", c.action.symbol(), c.address)?;
            }
        }
        if !self.steps.is_empty() {
            writeln!(f, "Steps:")?;
            for s in &self.steps {
                let status = serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                writeln!(f, "  {:>7} ms  {:<12} {}", s.duration_ms, status, s.key)?;
            }
        }
        if !self.critical_path.is_empty() {
            writeln!(f, "Critical path ({} ms):", self.critical_path_ms)?;
            for k in &self.critical_path {
                writeln!(f, "  {k}")?;
            }
        }
        for b in &self.blackouts {
            match b.duration_ms {
                _ if b.switchover_only => writeln!(
                    f,
                    "Blackout of {}: libvirt's switchover only (arrived running, traffic through the SA)",
                    b.vm
                )?,
                Some(ms) => writeln!(f, "Blackout of {} (block to enable): {ms} ms", b.vm)?,
                None => writeln!(f, "Blackout of {}: not complete in this run", b.vm)?,
            }
        }
        if let Some(r) = &self.rollback {
            match &r.stopped_at {
                Some(s) => writeln!(f, "Rollback: {} steps undone, stopped at {s}", r.undone)?,
                None => writeln!(f, "Rollback: {} steps undone", r.undone)?,
            }
        }
        Ok(())
    }
}
