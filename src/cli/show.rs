//! `smig show FILE [--json | --runbook]`: render a plan saved with `smig plan --out`.

use super::views::{view, Paint, Rendering};
use super::{color_stdout, print, Exit};
use crate::planfile;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The plan file.
    pub file: PathBuf,
    /// Print the plan document as JSON (schemas/plan.schema.json).
    #[arg(long, conflicts_with = "runbook")]
    pub json: bool,
    /// Print the plan as a Markdown runbook for disaster-recovery use.
    #[arg(long)]
    pub runbook: bool,
}

impl Args {
    fn rendering(&self) -> Rendering {
        if self.json {
            Rendering::Json
        } else if self.runbook {
            Rendering::Runbook
        } else {
            Rendering::Human
        }
    }
}

pub fn run(args: Args, no_color: bool) -> miette::Result<Exit> {
    let doc = planfile::read(&args.file)?;
    let paint = Paint {
        color: color_stdout(no_color),
    };
    print(&view(args.rendering(), paint).render(&doc))?;
    Ok(Exit::Success)
}
