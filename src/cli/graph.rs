//! `smig graph [DIR] --observed FILE [--format dot|mermaid]`, or `smig graph --plan FILE`:
//! the step DAG, one node per step labelled `#n kind subject @target`.

use super::views::{graph_view, GraphFormat};
use super::{pipeline, print, ConfigArgs, Exit};
use crate::config::Mode;
use crate::planfile;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Recorded discovered landscape (JSON, schemas/observed.schema.json).
    #[arg(long, value_name = "FILE", required_unless_present = "plan")]
    pub observed: Option<PathBuf>,
    /// Draw a plan saved with `smig plan --out` instead of planning.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["observed", "dir", "vars", "var_files", "targets", "excludes"])]
    pub plan: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
    /// Plan only this resource and what it needs (repeatable), e.g. vm.db.
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<String>,
    /// Leave this resource out of the plan (repeatable).
    #[arg(long = "exclude", value_name = "ADDR")]
    pub excludes: Vec<String>,
}

pub fn run(args: Args) -> miette::Result<Exit> {
    let doc = match (&args.plan, &args.observed) {
        (Some(file), _) => planfile::read(file)?,
        (None, Some(observed)) => {
            let loaded = pipeline::load(&args.config, Mode::Plan)?;
            let observed = pipeline::discover(observed, &loaded.landscape)?;
            pipeline::plan(&loaded, &observed, &args.targets, &args.excludes)?.doc
        }
        (None, None) => miette::bail!("smig graph needs --observed FILE or --plan FILE"),
    };
    print(&graph_view(args.format).render(&doc))?;
    Ok(Exit::Success)
}
