//! `smig completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell.

use super::{print, Cli, Exit};
use clap::CommandFactory;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The completion script for `shell`.
pub fn script(shell: clap_complete::Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "smig", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn run(args: Args) -> miette::Result<Exit> {
    print(&script(args.shell))?;
    Ok(Exit::Success)
}
