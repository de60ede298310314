//! The human plan, Terraform-like: the changed resources with a compact diff, the numbered
//! steps with their dependencies and target hosts, the invariants, warnings and a summary.

use super::diff::{diff, DiffLine};
use super::{Paint, PlanView};
use crate::model::MigrationMode;
use crate::plan::{Action, ChangeAction, ResourceChange};
use crate::planfile::{PlanFile, PlannedStep};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Text for a terminal or a pull-request comment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Human {
    pub paint: Paint,
}

impl PlanView for Human {
    fn render(&self, plan: &PlanFile) -> String {
        let p = self.paint;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}",
            p.dim(&format!(
                "Configuration {}, discovered landscape {}.",
                short(&plan.fingerprints.config),
                short(&plan.fingerprints.observed)
            ))
        );
        out.push('\n');

        if !plan.summary.has_changes() {
            let _ = writeln!(
                out,
                "{} The discovered landscape matches the configuration.",
                p.green(&p.bold("No changes."))
            );
            warnings(&mut out, plan, p);
            return out;
        }

        if !plan.changes.is_empty() {
            let _ = writeln!(out, "smig will make these changes (discovered → desired):");
            out.push('\n');
            for c in &plan.changes {
                change(&mut out, c, p);
                out.push('\n');
            }
        }

        if !plan.steps.is_empty() {
            steps(&mut out, &plan.steps, p);
            out.push('\n');
        }

        invariants(&mut out, plan, p);
        warnings(&mut out, plan, p);
        out.push('\n');
        let _ = writeln!(out, "{}", p.bold(&summary_line(plan)));
        out
    }
}

/// `sha256:` and the first 12 hex digits.
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take("sha256:".len() + 12).collect()
}

fn change(out: &mut String, c: &ResourceChange, p: Paint) {
    let symbol = c.action.symbol().to_string();
    let (symbol, verb) = match c.action {
        ChangeAction::Create => (p.green(&symbol), "will be created"),
        ChangeAction::Update => (p.yellow(&symbol), "will be updated"),
        ChangeAction::Delete => (p.red(&symbol), "will be removed"),
        ChangeAction::Move => (p.cyan(&symbol), "will move"),
    };
    let _ = writeln!(out, "  {symbol} {} {verb}", p.bold(&c.address));
    for line in diff(c.before.as_ref(), c.after.as_ref()) {
        let _ = match line {
            DiffLine::Removed(t) => writeln!(out, "      {}", p.red(&format!("- {t}"))),
            DiffLine::Added(t) => writeln!(out, "      {}", p.green(&format!("+ {t}"))),
            DiffLine::Same(t) => writeln!(out, "        {t}"),
            DiffLine::Gap => writeln!(out, "        {}", p.dim("...")),
        };
    }
}

/// Where a step acts: `on dc.hv2`, or `dc.hv2 → cloud.c1` for a migration (with `(cold)` or
/// `(arrives paused)` when it is not a plain live migration).
pub fn placement(step: &PlannedStep) -> String {
    match &step.action {
        Action::Migrate {
            from,
            to,
            mode,
            paused,
            ..
        } => match (mode, paused) {
            (MigrationMode::Cold, _) => format!("{from} → {to} (cold)"),
            (MigrationMode::Live, true) => format!("{from} → {to} (arrives paused)"),
            (MigrationMode::Live, false) => format!("{from} → {to}"),
        },
        _ => format!("on {}", step.target),
    }
}

/// `after #1, #2`, or nothing for a step that starts at once.
pub fn after(step: &PlannedStep) -> String {
    if step.depends_on.is_empty() {
        String::new()
    } else {
        let deps: Vec<String> = step.depends_on.iter().map(|d| format!("#{d}")).collect();
        format!("after {}", deps.join(", "))
    }
}

fn steps(out: &mut String, steps: &[PlannedStep], p: Paint) {
    let _ = writeln!(
        out,
        "Steps ({}, in dependency order; FIG. 3 blocks in brackets):",
        steps.len()
    );
    out.push('\n');
    let num_w = steps
        .iter()
        .map(|s| format!("#{}", s.number).len())
        .max()
        .unwrap_or(0);
    let kind_w = steps
        .iter()
        .map(|s| s.kind.as_str().len())
        .max()
        .unwrap_or(0);
    let subj_w = steps
        .iter()
        .map(|s| s.subject.chars().count())
        .max()
        .unwrap_or(0);
    // Each step's placement and dependencies, written once.
    let columns: Vec<(String, String)> = steps.iter().map(|s| (placement(s), after(s))).collect();
    let place_w = columns
        .iter()
        .map(|(place, _)| place.chars().count())
        .max()
        .unwrap_or(0);
    let after_w = columns
        .iter()
        .map(|(_, after)| after.chars().count())
        .max()
        .unwrap_or(0);
    for (s, (place, after)) in steps.iter().zip(&columns) {
        let num = format!("#{}", s.number);
        let line = format!(
            "  {num:>num_w$}  {:<kind_w$}  {:<subj_w$}  {place:<place_w$}  {after:<after_w$}  [{}]",
            s.kind.as_str(),
            s.subject,
            s.fig3,
        );
        let _ = writeln!(out, "{}", line.trim_end());
        if let Action::Migrate { tls: false, .. } = s.action {
            let _ = writeln!(
                out,
                "  {:>num_w$}  {}",
                "",
                p.red(
                    "! migration stream without TLS: guest memory crosses the network in cleartext"
                )
            );
        }
        if let crate::plan::Inverse::PointOfNoReturn { reason } = &s.inverse {
            let _ = writeln!(
                out,
                "  {:>num_w$}  {}",
                "",
                p.yellow(&format!("! point of no return: {reason}"))
            );
        }
    }
}

fn invariants(out: &mut String, plan: &PlanFile, p: Paint) {
    if plan.invariants.is_empty() {
        return;
    }
    let _ = writeln!(out, "Security invariants:");
    for inv in &plan.invariants {
        // A breach the policy explicitly allows is not a pass: it is marked, in red.
        let mark = match (inv.holds, inv.waived.is_empty()) {
            (false, _) => p.red("✗"),
            (true, false) => p.red("!"),
            (true, true) => p.green("✓"),
        };
        let _ = writeln!(out, "  {mark} {}. {}", inv.number, inv.statement);
        for v in &inv.violations {
            let _ = writeln!(out, "      {}", p.red(&format!("- {v}")));
        }
        for w in &inv.waived {
            let _ = writeln!(out, "      {}", p.red(&format!("! allowed by policy: {w}")));
        }
    }
}

fn warnings(out: &mut String, plan: &PlanFile, p: Paint) {
    if plan.targeting.is_partial() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{} {}",
            p.yellow(&p.bold("Note:")),
            targeting_note(plan)
        );
    }
    for w in &plan.warnings {
        out.push('\n');
        let _ = writeln!(out, "{} {}", p.red(&p.bold("Warning:")), p.red(w));
    }
}

/// Says which part of the configuration a targeted plan covers.
pub fn targeting_note(plan: &PlanFile) -> String {
    let t = &plan.targeting;
    let mut parts = Vec::new();
    if !t.targets.is_empty() {
        parts.push(format!("only {} and what it needs", t.targets.join(", ")));
    }
    if !t.excludes.is_empty() {
        parts.push(format!("without {}", t.excludes.join(", ")));
    }
    format!(
        "resource targeting is in effect: this plan covers {}. Other differences between \
         the configuration and the landscape may remain.",
        parts.join(", ")
    )
}

/// `Plan: 1 VM to move, 1 link to add, 9 steps.`
pub fn summary_line(plan: &PlanFile) -> String {
    let mut counts: BTreeMap<(ChangeAction, String), usize> = BTreeMap::new();
    for c in &plan.changes {
        let kind = c.address.split('.').next().unwrap_or_default().to_string();
        *counts.entry((c.action, kind)).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .iter()
        .map(|((action, kind), n)| {
            let noun = noun(kind, *n);
            let verb = match action {
                ChangeAction::Create => "add",
                ChangeAction::Update => "change",
                ChangeAction::Delete => "remove",
                ChangeAction::Move => "move",
            };
            format!("{n} {noun} to {verb}")
        })
        .collect();
    parts.push(format!(
        "{} {}",
        plan.steps.len(),
        if plan.steps.len() == 1 {
            "step"
        } else {
            "steps"
        }
    ));
    let verdict = if plan.invariants_hold() {
        String::new()
    } else {
        " Invariants violated: smig refuses to apply this plan.".to_string()
    };
    format!("Plan: {}.{verdict}", parts.join(", "))
}

fn noun(kind: &str, n: usize) -> String {
    let (one, many) = match kind {
        "vm" => ("VM", "VMs"),
        "secure_link" => ("link", "links"),
        "subnet" => ("subnet", "subnets"),
        "host" => ("host", "hosts"),
        other => {
            return if n == 1 {
                other.to_string()
            } else {
                format!("{other}s")
            }
        }
    };
    if n == 1 { one } else { many }.to_string()
}
