//! The command line: one module per subcommand, the views they render with, and the few
//! pieces they share (reading configuration inputs, colour, exit codes).
//!
//! | command | does |
//! |---|---|
//! | `validate [DIR]` | load every `*.smig.hcl` of DIR, report every error |
//! | `fmt [DIR\|FILE] [--check] [--diff]` | rewrite files canonically (atomic rename) |
//! | `plan [DIR] [--observed FILE]` | plan (live discovery through the real drivers unless `--observed`); `--json`, `--runbook`, `--out FILE`, `--detailed-exitcode`, `--target`, `--exclude` |
//! | `show FILE` | render a saved plan; `--json`, `--runbook` |
//! | `graph [DIR] --observed FILE \| --plan FILE` | the step DAG; `--format dot\|mermaid` |
//! | `completions SHELL` | bash, zsh, fish, elvish, powershell |
//!
//! Variables: `--var NAME=VALUE` over `--var-file FILE` over `SMIG_VAR_NAME`.
//!
//! Exit codes: 0 success; 1 error (diagnostics on stderr, also for usage errors); 2
//! `plan --detailed-exitcode` with changes; 3 `fmt --check` with a file that would be
//! rewritten (as `terraform fmt -check`).
//!
//! Colour only when the stream is a terminal, `NO_COLOR` is unset and `--no-color` is not
//! given; diagnostics (miette) follow the same rule on stderr.
//!
//! The plan document (`--json`, `--out`, `show`) is [`crate::planfile::PlanFile`], described by
//! `schemas/plan.schema.json`; recorded snapshots (`--observed`) follow
//! `schemas/observed.schema.json`.

pub mod apply;
pub mod completions;
pub mod fmt;
pub mod graph;
pub mod inputs;
pub mod pipeline;
pub mod plan;
pub mod show;
pub mod state;
pub mod validate;
pub mod views;

use clap::{Parser, Subcommand};
use miette::Diagnostic;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// smig: declarative secure migration of virtual machines out of a trusted environment.
#[derive(Debug, Parser)]
#[command(name = "smig", version, about, propagate_version = true)]
pub struct Cli {
    /// Never colour the output (colour is also off when NO_COLOR is set or output is not a
    /// terminal).
    #[arg(long, global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration (every *.smig.hcl of a directory) and report every error.
    Validate(validate::Args),
    /// Rewrite configuration files in the canonical format.
    Fmt(fmt::Args),
    /// Discover what runs, diff it with the configuration and show the migration plan.
    Plan(plan::Args),
    /// Show a plan saved with `smig plan --out`.
    Show(show::Args),
    /// Print the plan's step graph in DOT or Mermaid.
    Graph(graph::Args),
    /// Apply a plan (saved, or made now and confirmed) with rollback on failure.
    Apply(apply::Args),
    /// Undo what an unfinished apply did, checking the landscape before each step.
    Rollback(apply::RollbackArgs),
    /// Inspect the state directory: lock, unfinished apply, last applied configuration.
    State(state::Args),
    /// Print a shell completion script.
    Completions(completions::Args),
}

/// How a successful command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 2: `plan --detailed-exitcode` found changes.
    Changes,
    /// 3: `fmt --check` found a file that would change.
    WouldReformat,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Changes => 2,
            Exit::WouldReformat => 3,
        }
    }
}

/// Exit code of a failed command.
pub const EXIT_ERROR: u8 = 1;

/// Errors of the command layer itself (configuration and plan errors bring their own).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    #[diagnostic(code(smig::cli::read))]
    Read { path: String, reason: String },
    /// A file could not be written.
    #[error("cannot write {path}: {reason}")]
    #[diagnostic(code(smig::cli::write))]
    Write { path: String, reason: String },
    /// A directory holds no configuration.
    #[error("no *.smig.hcl files in {path}")]
    #[diagnostic(
        code(smig::cli::no_configuration),
        help(
            "smig reads every file ending in .smig.hcl in the directory (default: the current one)"
        )
    )]
    NoConfiguration { path: String },
    /// A `--var` argument without `=`.
    #[error("invalid --var `{arg}`: expected NAME=VALUE")]
    #[diagnostic(code(smig::cli::var), help("e.g. --var 'region=eu-1'"))]
    BadVar { arg: String },
    /// An `SMIG_VAR_` environment variable that is not UTF-8.
    #[error("the environment variable {name} is not valid UTF-8")]
    #[diagnostic(code(smig::cli::var_env))]
    BadEnvVar { name: String },
    /// The async runtime for discovery could not start.
    #[error("cannot start the discovery runtime: {reason}")]
    #[diagnostic(code(smig::cli::runtime))]
    Runtime { reason: String },
}

/// Whether to colour what goes to stdout: not with `--no-color`, not with NO_COLOR set, and
/// never when stdout is not a terminal.
pub fn color_stdout(no_color: bool) -> bool {
    color_allowed(no_color)
        && std::io::stdout().is_terminal()
        && supports_color::on(supports_color::Stream::Stdout).is_some()
}

/// Like [`color_stdout`], for stderr (diagnostics).
pub fn color_stderr(no_color: bool) -> bool {
    color_allowed(no_color)
        && std::io::stderr().is_terminal()
        && supports_color::on(supports_color::Stream::Stderr).is_some()
}

fn color_allowed(no_color: bool) -> bool {
    !no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes `text` to stdout. A closed pipe (`smig plan | head`) is not an error.
pub fn print(text: &str) -> miette::Result<()> {
    print_with(|out| out.write_all(text.as_bytes()))
}

/// Writes to standard output through `write`, buffered, as [`print`] does.
pub fn print_with(
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> miette::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Write {
            path: "standard output".into(),
            reason: e.to_string(),
        }
        .into()),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> miette::Result<Exit> {
    let no_color = cli.no_color;
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Plan(args) => plan::run(args, no_color),
        Command::Show(args) => show::run(args, no_color),
        Command::Graph(args) => graph::run(args),
        Command::Apply(args) => apply::run(args, no_color),
        Command::Rollback(args) => apply::run_rollback(args),
        Command::State(args) => state::run(args),
        Command::Completions(args) => completions::run(args),
    }
}

/// Sets up miette's report handler: graphical, coloured only when stderr allows it.
fn install_report_handler(no_color: bool) {
    let color = color_stderr(no_color);
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .terminal_links(color)
                .force_graphical(true)
                .unicode(color)
                .build(),
        )
    }));
}

/// The whole program: parse the arguments, run the command, report an error, pick the exit
/// code. Usage errors exit 1 (2 is reserved for `plan --detailed-exitcode`).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_ERROR),
            };
        }
    };
    install_report_handler(cli.no_color);
    match run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(report) => {
            let _ = writeln!(std::io::stderr().lock(), "{report:?}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Leaves a command's large values to the end of the process instead of freeing them. `smig`
/// runs one command and exits, and the kernel takes the memory back at once; freeing a
/// 10,000-VM landscape and its plan piece by piece takes tens of milliseconds. Only for plain
/// data: nothing whose drop has an effect (files, locks, connections).
fn leave_to_exit<T>(value: T) {
    std::mem::forget(value);
}

/// The configuration inputs shared by `validate`, `plan` and `graph`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Directory holding the *.smig.hcl files (or a single file).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Set a variable: NAME=VALUE (repeatable; wins over --var-file and SMIG_VAR_NAME).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variable values from an HCL file of `name = value` lines (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}
