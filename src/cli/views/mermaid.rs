//! The step DAG as a Mermaid flowchart (renders in GitHub and GitLab Markdown).

use super::{label, PlanView};
use crate::planfile::PlanFile;
use std::fmt::Write;

/// A `flowchart TD` with one node per step and an edge from each dependency to its dependent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mermaid;

/// Mermaid labels in double quotes take any text except `"`; `#...;` would be read as an
/// entity code, so `#` followed later by `;` is escaped too.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            ';' => out.push_str("#59;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

impl PlanView for Mermaid {
    fn render(&self, plan: &PlanFile) -> String {
        let mut out = String::from("flowchart TD\n");
        for s in &plan.steps {
            let _ = writeln!(out, "  s{}[\"{}\"]", s.number, escape(&label(s)));
        }
        for s in &plan.steps {
            for d in &s.depends_on {
                let _ = writeln!(out, "  s{d} --> s{}", s.number);
            }
        }
        let pnr: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| s.is_point_of_no_return())
            .map(|s| format!("s{}", s.number))
            .collect();
        if !pnr.is_empty() {
            out.push_str("  classDef pointOfNoReturn stroke:#c00,stroke-width:3px\n");
            let _ = writeln!(out, "  class {} pointOfNoReturn", pnr.join(","));
        }
        out
    }
}
