//! `smig validate [DIR]`: load the configuration and report every error at once.

use super::pipeline;
use super::{print, ConfigArgs, Exit};
use crate::config::Mode;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn run(args: Args) -> miette::Result<Exit> {
    let loaded = pipeline::load(&args.config, Mode::Validate)?;
    print("Success! The configuration is valid.\n")?;
    super::leave_to_exit(loaded);
    Ok(Exit::Success)
}
