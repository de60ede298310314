//! Renderings of a plan document. Each view is a pure function from a [`PlanFile`] to text,
//! so tests need no terminal and `smig plan` and `smig show` print the same thing.

pub mod diff;
pub mod dot;
pub mod human;
pub mod json;
pub mod mermaid;
pub mod runbook;
pub mod words;

use crate::planfile::PlanFile;
use owo_colors::OwoColorize;

/// A way to render a plan.
pub trait PlanView {
    fn render(&self, plan: &PlanFile) -> String;
}

/// The renderings `plan` and `show` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    Human,
    Json,
    Runbook,
}

/// The view for a rendering.
pub fn view(rendering: Rendering, paint: Paint) -> Box<dyn PlanView> {
    match rendering {
        Rendering::Human => Box::new(human::Human { paint }),
        Rendering::Json => Box::new(json::Json),
        Rendering::Runbook => Box::new(runbook::Runbook),
    }
}

/// Terminal styling that is either on or off; off gives plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Paint {
    pub color: bool,
}

impl Paint {
    pub const PLAIN: Paint = Paint { color: false };

    pub fn red(self, s: &str) -> String {
        if self.color {
            s.red().to_string()
        } else {
            s.to_string()
        }
    }
    pub fn green(self, s: &str) -> String {
        if self.color {
            s.green().to_string()
        } else {
            s.to_string()
        }
    }
    pub fn yellow(self, s: &str) -> String {
        if self.color {
            s.yellow().to_string()
        } else {
            s.to_string()
        }
    }
    pub fn cyan(self, s: &str) -> String {
        if self.color {
            s.cyan().to_string()
        } else {
            s.to_string()
        }
    }
    pub fn bold(self, s: &str) -> String {
        if self.color {
            s.bold().to_string()
        } else {
            s.to_string()
        }
    }
    pub fn dim(self, s: &str) -> String {
        if self.color {
            s.dimmed().to_string()
        } else {
            s.to_string()
        }
    }
}

/// A step's graph label: `#3 migrate vm.db @dc.hv2`.
pub fn label(step: &crate::planfile::PlannedStep) -> String {
    format!(
        "#{} {} {} @{}",
        step.number, step.kind, step.subject, step.target
    )
}

/// The graph renderings of `smig graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// The view for a graph format.
pub fn graph_view(format: GraphFormat) -> Box<dyn PlanView> {
    match format {
        GraphFormat::Dot => Box::new(dot::Dot),
        GraphFormat::Mermaid => Box::new(mermaid::Mermaid),
    }
}
