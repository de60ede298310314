//! The step DAG in Graphviz DOT (`smig graph --format dot | dot -Tsvg`).

use super::{label, PlanView};
use crate::planfile::PlanFile;
use std::fmt::Write;

/// A `digraph` with one node per step and an edge from each dependency to its dependent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dot;

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

impl PlanView for Dot {
    fn render(&self, plan: &PlanFile) -> String {
        let mut out = String::from("digraph smig_plan {\n");
        out.push_str("  rankdir = \"TB\";\n");
        out.push_str("  node [shape = \"box\", fontname = \"monospace\"];\n");
        for s in &plan.steps {
            let extra = if s.is_point_of_no_return() {
                ", color = \"red\", penwidth = 2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  s{} [label = {}{extra}];",
                s.number,
                quote(&label(s))
            );
        }
        for s in &plan.steps {
            for d in &s.depends_on {
                let _ = writeln!(out, "  s{d} -> s{};", s.number);
            }
        }
        out.push_str("}\n");
        out
    }
}
