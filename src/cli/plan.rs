//! `smig plan [DIR] [--observed FILE]`: load, discover (live, or from a recorded snapshot), diff, build the step DAG, check the
//! invariants and show the plan (human, `--json` or `--runbook`); `--out FILE` saves it.

use super::views::{view, Paint, Rendering};
use super::{color_stdout, pipeline, print, ConfigArgs, Exit};
use crate::config::Mode;
use crate::planfile;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Plan against a recorded discovered landscape (JSON, schemas/observed.schema.json)
    /// instead of discovering the running one through the real drivers.
    #[arg(long, value_name = "FILE")]
    pub observed: Option<PathBuf>,
    /// Print the plan document as JSON (schemas/plan.schema.json).
    #[arg(long, conflicts_with = "runbook")]
    pub json: bool,
    /// Print the plan as a Markdown runbook for disaster-recovery use.
    #[arg(long)]
    pub runbook: bool,
    /// Exit 0 when there is nothing to do, 2 when the plan changes something, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the plan for `smig apply` and `smig show` (written atomically).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Plan only this resource and what it needs (repeatable), e.g. vm.db.
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<String>,
    /// Leave this resource out of the plan (repeatable).
    #[arg(long = "exclude", value_name = "ADDR")]
    pub excludes: Vec<String>,
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
    let loaded = pipeline::load(&args.config, Mode::Plan)?;
    let observed = match &args.observed {
        Some(file) => pipeline::discover(file, &loaded.landscape)?,
        None => pipeline::discover_live(&loaded.landscape).map_err(|e| {
            e.wrap_err(
                "live discovery through the real drivers failed (to plan against a recorded snapshot instead, pass --observed FILE)",
            )
        })?,
    };
    let planned = pipeline::plan(&loaded, &observed, &args.targets, &args.excludes)?;
    let exit = show(&args, no_color, &planned.doc, planned.refused);
    super::leave_to_exit((loaded, observed, planned.doc));
    exit
}

/// Prints the plan, saves it with `--out`, and gives the exit status.
fn show(
    args: &Args,
    no_color: bool,
    doc: &planfile::PlanFile,
    refused: Option<miette::Report>,
) -> miette::Result<Exit> {
    let paint = Paint {
        color: color_stdout(no_color),
    };
    match args.rendering() {
        // Written as it is serialized: a 10,000-VM document is ~19 MB of text.
        Rendering::Json => super::print_with(|out| doc.write_json(out))?,
        rendering => print(&view(rendering, paint).render(doc))?,
    }
    if let Some(refused) = refused {
        // The plan was shown so the reviewer sees the failed invariants; it is not saved.
        return Err(refused);
    }
    if let Some(out) = &args.out {
        planfile::write(out, doc)?;
        let note = format!(
            "\nSaved the plan to {0}. Apply it with: smig apply {0}\n",
            out.display()
        );
        if args.rendering() == Rendering::Human {
            print(&note)?;
        } else {
            // Keep stdout a clean JSON or Markdown document.
            let _ = std::io::stderr().lock().write_all(note.as_bytes());
        }
    }
    Ok(if args.detailed_exitcode && doc.summary.has_changes() {
        Exit::Changes
    } else {
        Exit::Success
    })
}
