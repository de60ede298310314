//! The plan as a Markdown runbook for disaster-recovery use: prerequisites, then each step
//! with its target host, what it does, how to verify it and how to undo it, with the points of
//! no return called out.

use super::human::{placement, summary_line};
use super::words::{self, sentence};
use super::PlanView;
use crate::plan::{Action, Inverse, Target};
use crate::planfile::{PlanFile, PlannedStep};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Markdown for a runbook page or an incident ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runbook;

impl PlanView for Runbook {
    fn render(&self, plan: &PlanFile) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Runbook: smig migration plan\n");
        let _ = writeln!(
            out,
            "Made by smig {} from configuration `{}` and discovered landscape `{}`.\n",
            plan.smig_version, plan.fingerprints.config, plan.fingerprints.observed
        );
        let _ = writeln!(out, "**{}**\n", summary_line(plan));
        for w in &plan.warnings {
            let _ = writeln!(out, "> **Warning:** {w}\n");
        }
        if plan.targeting.is_partial() {
            let _ = writeln!(out, "> **Note:** {}\n", super::human::targeting_note(plan));
        }
        if plan.steps.is_empty() {
            let _ = writeln!(
                out,
                "Nothing to do: the discovered landscape matches the configuration."
            );
            return out;
        }
        prerequisites(&mut out, plan);
        points_of_no_return(&mut out, plan);
        let _ = writeln!(out, "## Steps\n");
        let _ = writeln!(
            out,
            "Run the steps in number order. A step may start once every step it comes after is \
             verified; independent steps may run in parallel.\n"
        );
        for s in &plan.steps {
            step(&mut out, s);
        }
        let _ = writeln!(out, "## If a step fails\n");
        let _ = writeln!(
            out,
            "1. Start no further step. Leave blocked VMs blocked: traffic stays cut, never in \
             cleartext.\n\
             2. Undo the completed steps in reverse order (highest number first) with each \
             step's **Undo**, verifying as you go.\n\
             3. Stop at a point of no return: do not undo past it; keep the VM blocked and \
             escalate.\n\
             4. Never re-enable a VM's traffic with a peer across the untrusted network before \
             the IPsec SA of that pair is up."
        );
        out
    }
}

fn prerequisites(out: &mut String, plan: &PlanFile) {
    let _ = writeln!(out, "## Prerequisites\n");
    let mut hosts = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut links = BTreeSet::new();
    for s in &plan.steps {
        match &s.target {
            Target::Host(h) => {
                hosts.insert(h.to_string());
            }
            Target::RoutingCore(env) => {
                cores.insert(env.to_string());
            }
        }
        if let Action::IpsecInstall { link, .. } = &s.action {
            links.insert(link.to_string());
        }
    }
    let code = |set: &BTreeSet<String>| {
        set.iter()
            .map(|h| format!("`{h}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !hosts.is_empty() {
        let _ = writeln!(
            out,
            "- [ ] Administrative access to the hypervisor hosts {} (libvirt, nftables, strongSwan).",
            code(&hosts)
        );
    }
    if !cores.is_empty() {
        let _ = writeln!(out, "- [ ] Access to the routing core of {}.", code(&cores));
    }
    if !links.is_empty() {
        let _ = writeln!(
            out,
            "- [ ] The IPsec keys of secure_link {}, from the configuration's secret store \
             (never written in this runbook).",
            code(&links)
        );
    }
    let _ = writeln!(
        out,
        "- [ ] The landscape is still the one this plan was made from (discovered landscape \
         `{}`): `smig apply` refuses a stale plan; by hand, check the **Before** facts of each \
         step.",
        plan.fingerprints.observed
    );
    if plan.invariants.is_empty() {
        let _ = writeln!(out);
        return;
    }
    let _ = writeln!(out, "- [ ] The security invariants hold for this plan:");
    for inv in &plan.invariants {
        let mark = match (inv.holds, inv.waived.is_empty()) {
            (false, _) => "✗",
            (true, false) => "! (waived)",
            (true, true) => "✓",
        };
        let _ = writeln!(out, "  - {mark} {}. {}", inv.number, inv.statement);
        for v in &inv.violations {
            let _ = writeln!(out, "    - **violated:** {v}");
        }
        for w in &inv.waived {
            let _ = writeln!(out, "    - **allowed by policy (insecure):** {w}");
        }
    }
    let _ = writeln!(out);
}

fn points_of_no_return(out: &mut String, plan: &PlanFile) {
    let _ = writeln!(out, "## Points of no return\n");
    let pnr: Vec<&PlannedStep> = plan
        .steps
        .iter()
        .filter(|s| s.is_point_of_no_return())
        .collect();
    if pnr.is_empty() {
        let _ = writeln!(out, "None: every step can be undone.\n");
        return;
    }
    for s in pnr {
        if let Inverse::PointOfNoReturn { reason } = &s.inverse {
            let _ = writeln!(
                out,
                "- ⚠️ **Step {}** ({} {}): {reason}",
                s.number, s.kind, s.subject
            );
        }
    }
    let _ = writeln!(out);
}

fn facts(out: &mut String, title: &str, facts: &[crate::plan::Fact]) {
    if facts.is_empty() {
        return;
    }
    let _ = writeln!(out, "**{title}**\n");
    for f in facts {
        match words::check_by_hand(f) {
            Some(check) => {
                let _ = writeln!(out, "- [ ] {} ({check})", sentence(&words::fact(f)));
            }
            None => {
                let _ = writeln!(out, "- [ ] {}", sentence(&words::fact(f)));
            }
        }
    }
    let _ = writeln!(out);
}

fn step(out: &mut String, s: &PlannedStep) {
    let _ = writeln!(
        out,
        "### {}. {} {} {}\n",
        s.number,
        s.kind,
        s.subject,
        placement(s)
    );
    let after = if s.depends_on.is_empty() {
        "can start at once".to_string()
    } else {
        let deps: Vec<String> = s.depends_on.iter().map(|d| d.to_string()).collect();
        let noun = if deps.len() == 1 { "step" } else { "steps" };
        format!("after {noun} {}", deps.join(", "))
    };
    let fig3 = match s.fig3.as_str() {
        "-" => "no FIG. 3 block (smig's own)".to_string(),
        blocks => format!("FIG. 3 block {blocks}"),
    };
    let _ = writeln!(
        out,
        "Target: `{}` · {fig3} · {after} · key `{}`\n",
        s.target, s.key
    );
    if s.is_point_of_no_return() {
        let _ = writeln!(
            out,
            "> ⚠️ **Point of no return.** Once this step completed it cannot be undone.\n"
        );
    }
    facts(out, "Before (must hold):", &s.precondition);
    let _ = writeln!(out, "**Do:** {}.\n", sentence(&words::action(&s.action)));
    facts(out, "Verify:", &s.effect);
    let _ = writeln!(
        out,
        "**Undo:** {}.\n",
        sentence(&words::inverse(&s.inverse))
    );
}
