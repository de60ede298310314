//! `smig apply [PLANFILE] [DIR]` and `smig rollback [DIR]`: run a plan through the drivers
//! with the state directory's lock and journal, show progress, print the report.
//!
//! Without `--test-double FILE` (the landscape test double, which acts on a recorded-snapshot
//! file) the real drivers act on the running landscape (`crate::drivers::real`: libvirt,
//! nftables/netlink in `netns:` targets, strongSwan over VICI; settings from `SMIG_LAB`,
//! `SMIG_VICI_SOCKET`, `SMIG_OVERLAY_PREFIX`, `SMIG_LIBVIRT_PKI`).

use super::views::{view, Paint, Rendering};
use super::{color_stdout, pipeline, print, ConfigArgs, Exit};
use crate::apply::events::{self, Event, EventSink};
use crate::apply::report::ApplyReport;
use crate::apply::walker::{INTERRUPT_NOW, INTERRUPT_STOP};
use crate::apply::{session, ApplyMeta, Engine, ExecContext, OnFailure, Run, WalkOptions};
use crate::config::Mode;
use crate::drivers::double::LandscapeDouble;
use crate::drivers::Drivers;
use crate::planfile::{self, Fingerprints};
use crate::state::journal::Outcome;
use crate::state::local::LocalState;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Errors of `apply` and `rollback` themselves.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ApplyCliError {
    #[error("more than one plan file or directory given: {0}")]
    #[diagnostic(code(smig::apply::arguments), help("smig apply [PLANFILE] [DIR]"))]
    Arguments(String),
    #[error("the plan breaks a security invariant; nothing was applied")]
    #[diagnostic(code(smig::apply::invariants))]
    Invariants,
    #[error("not applying without confirmation: standard input is not a terminal")]
    #[diagnostic(
        code(smig::apply::confirm),
        help("review the plan, then pass --auto-approve")
    )]
    NoConfirmation,
    #[error("apply cancelled")]
    #[diagnostic(code(smig::apply::cancelled))]
    Cancelled,
    #[error("{command} ended {outcome}")]
    #[diagnostic(code(smig::apply::outcome), help("{help}"))]
    Outcome {
        command: String,
        outcome: String,
        help: String,
    },
}

/// Driver selection and output, shared by `apply` and `rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run on the landscape test double: a recorded-snapshot JSON file that smig reads as the
    /// landscape and changes in place (faults and delays from FILE.double.json or SMIG_DOUBLE).
    #[arg(
        long = "test-double",
        visible_alias = "observed-double",
        value_name = "FILE"
    )]
    pub test_double: Option<PathBuf>,
    /// State directory (default: .smig next to the configuration).
    #[arg(long = "state", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Print events as JSON, one object per line (schemas/events.schema.json).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A plan saved with `smig plan --out`, and/or the configuration directory.
    #[arg(value_name = "PLANFILE|DIR", num_args = 0..=2)]
    pub paths: Vec<PathBuf>,
    /// Set a variable: NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variable values from an HCL file (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Steps run at once (default: the configuration's policy, else 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallelism: Option<u16>,
    /// What to do when a step fails: undo what was done, or stop fail-closed.
    #[arg(long, value_enum, default_value_t = FailureArg::Rollback)]
    pub on_failure: FailureArg,
    /// Continue the unfinished apply found in the state directory.
    #[arg(long, conflicts_with = "auto_approve")]
    pub resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailureArg {
    Rollback,
    Halt,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The state directory: `--state`, else `.smig` next to the configuration.
pub fn state_dir(state: Option<&Path>, config: &Path) -> PathBuf {
    if let Some(s) = state {
        return s.to_path_buf();
    }
    let base = if config.is_file() {
        config.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        config.to_path_buf()
    };
    base.join(".smig")
}

fn runtime() -> miette::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            super::CliError::Runtime {
                reason: e.to_string(),
            }
            .into()
        })
}

/// The event display: JSON lines, a live display on a terminal, plain lines otherwise; plus
/// the test double's crash hook.
fn event_sink(json: bool, double: Option<&Arc<LandscapeDouble>>) -> EventSink {
    let display = if json {
        events::json_lines(std::io::stdout())
    } else if std::io::stderr().is_terminal() {
        events::live()
    } else {
        events::plain_lines(std::io::stderr())
    };
    let Some(d) = double.cloned() else {
        return display;
    };
    events::tee(vec![
        display,
        Arc::new(move |e: &Event| {
            if matches!(e, Event::StepDone { .. } | Event::StepSkipped { .. }) {
                d.step_finished();
            }
        }),
    ])
}

/// First Ctrl-C: stop launching steps; second: abort running ones and return.
fn interrupts(rt: &tokio::runtime::Runtime) -> tokio::sync::watch::Receiver<u8> {
    let (tx, rx) = tokio::sync::watch::channel(0u8);
    rt.spawn(async move {
        let mut level = 0u8;
        while tokio::signal::ctrl_c().await.is_ok() {
            level = level.saturating_add(1);
            let _ = tx.send(if level >= 2 {
                INTERRUPT_NOW
            } else {
                INTERRUPT_STOP
            });
            if level >= 2 {
                break;
            }
        }
    });
    rx
}

/// The drivers an apply runs through: the test double, or the real ones.
enum Backend {
    Double(Arc<LandscapeDouble>),
    Real(Drivers),
}

impl Backend {
    fn discover(&self) -> &dyn crate::discover::Discover {
        match self {
            Backend::Double(d) => d.as_ref(),
            Backend::Real(d) => d,
        }
    }
}

fn drivers(run: &RunArgs, landscape: &crate::model::Landscape) -> miette::Result<Backend> {
    match run.test_double.as_ref() {
        Some(path) => Ok(Backend::Double(Arc::new(LandscapeDouble::load(path)?))),
        None => Ok(Backend::Real(pipeline::real_drivers(landscape)?)),
    }
}

fn engine(
    landscape: crate::model::Landscape,
    backend: &Backend,
    json: bool,
    options: WalkOptions,
) -> Engine {
    let (drivers, poll, double) = match backend {
        Backend::Double(double) => (
            Drivers::all(double.clone()),
            double
                .config()
                .route_poll_interval_ms
                .map(Duration::from_millis),
            Some(double),
        ),
        Backend::Real(d) => (d.clone(), None, None),
    };
    Engine {
        ctx: ExecContext {
            drivers,
            landscape: Arc::new(landscape),
            poll_interval: poll,
        },
        events: event_sink(json, double),
        options,
        discovered: None,
    }
}

/// Prints the report (stdout, or stderr under `--json`) and turns the outcome into an exit.
fn finish(run: &Run, json: bool) -> miette::Result<Exit> {
    let report: &ApplyReport = &run.report;
    let text = report.to_string();
    if json {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    } else {
        print(&text)?;
    }
    let (outcome, help) = match report.outcome {
        Outcome::Succeeded => return Ok(Exit::Success),
        Outcome::RolledBack if report.command == "rollback" => return Ok(Exit::Success),
        Outcome::RolledBack => (
            "rolled back",
            "every completed step was undone; the landscape is as it was",
        ),
        Outcome::Halted => (
            "halted (fail closed)",
            "the VMs concerned stay blocked; `smig apply --resume` continues, `smig rollback` undoes",
        ),
        Outcome::Interrupted => (
            "interrupted",
            "`smig apply --resume` continues, `smig rollback` undoes",
        ),
    };
    Err(ApplyCliError::Outcome {
        command: report.command.clone(),
        outcome: outcome.into(),
        help: help.into(),
    }
    .into())
}

fn confirm() -> miette::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(ApplyCliError::NoConfirmation.into());
    }
    let _ = write!(
        std::io::stderr().lock(),
        "\nDo you want to perform these actions? Only 'yes' is accepted: "
    );
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.trim() == "yes" {
        Ok(())
    } else {
        Err(ApplyCliError::Cancelled.into())
    }
}

pub fn run(args: Args, no_color: bool) -> miette::Result<Exit> {
    let mut plan_file = None;
    let mut dir = None;
    for p in &args.paths {
        let slot = if p.is_dir() { &mut dir } else { &mut plan_file };
        if slot.replace(p.clone()).is_some() {
            return Err(ApplyCliError::Arguments(
                args.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .into());
        }
    }
    let config = ConfigArgs {
        dir: dir.unwrap_or_else(|| PathBuf::from(".")),
        vars: args.vars.clone(),
        var_files: args.var_files.clone(),
    };
    let loaded = pipeline::load(&config, Mode::Plan)?;
    let double = drivers(&args.run, &loaded.landscape)?;
    let backend = LocalState::new(state_dir(args.run.state.as_deref(), &config.dir));
    let rt = runtime()?;
    let options = WalkOptions {
        parallelism: args
            .parallelism
            .map_or(loaded.landscape.policy.parallelism.max(1), usize::from),
        on_failure: match args.on_failure {
            FailureArg::Rollback => OnFailure::Rollback,
            FailureArg::Halt => OnFailure::Halt,
        },
        stop_after_steps: None,
        interrupt: Some(interrupts(&rt)),
    };
    let fingerprint = loaded.fingerprint.clone();
    if args.resume {
        let engine = engine(loaded.landscape, &double, args.run.json, options);
        let run = rt.block_on(session::resume(&backend, &engine, Some(&fingerprint)))?;
        return finish(&run, args.run.json);
    }
    // Locked before discovering: no other apply can change the landscape between this
    // discovery and the run, so the plan (made or checked here) stays current.
    let lock = session::lock_for_apply(&backend).map_err(crate::apply::ApplyError::from)?;
    let observed = rt.block_on(double.discover().discover(&loaded.landscape))?;
    let current = Fingerprints {
        config: loaded.fingerprint.clone(),
        observed: planfile::observed_fingerprint(&observed),
    };
    let paint = Paint {
        color: color_stdout(no_color),
    };
    let doc = match &plan_file {
        Some(path) => {
            let doc = planfile::read(path)?;
            doc.check_fresh(&current, &path.display().to_string())?;
            doc
        }
        None => {
            let planned = pipeline::plan(&loaded, &observed, &[], &[])?;
            if !args.run.json {
                print(&view(Rendering::Human, paint).render(&planned.doc))?;
            }
            if let Some(refused) = planned.refused {
                return Err(refused);
            }
            if !planned.doc.summary.has_changes() {
                return Ok(Exit::Success);
            }
            if !args.auto_approve {
                confirm()?;
            }
            planned.doc
        }
    };
    if !doc.invariants_hold() {
        return Err(ApplyCliError::Invariants.into());
    }
    let plan = doc.to_plan();
    let meta = ApplyMeta {
        apply_id: ApplyMeta::new_id(),
        config_fingerprint: Some(current.config),
        observed_fingerprint: Some(current.observed),
    };
    let mut engine = engine(loaded.landscape, &double, args.run.json, options);
    // Discovery has just read the landscape under the lock: unless someone was asked to
    // confirm meanwhile, the walk's first checks start from it.
    if plan_file.is_some() || args.auto_approve {
        engine.discovered = Some(Arc::new(observed));
    }
    let run = rt.block_on(session::apply_locked(lock, &engine, &plan, &meta))?;
    finish(&run, args.run.json)
}

pub fn run_rollback(args: RollbackArgs) -> miette::Result<Exit> {
    let loaded = pipeline::load(&args.config, Mode::Plan)?;
    let double = drivers(&args.run, &loaded.landscape)?;
    let backend = LocalState::new(state_dir(args.run.state.as_deref(), &args.config.dir));
    let rt = runtime()?;
    let options = WalkOptions {
        parallelism: 1,
        on_failure: OnFailure::Halt,
        stop_after_steps: None,
        interrupt: Some(interrupts(&rt)),
    };
    let engine = engine(loaded.landscape, &double, args.run.json, options);
    let run = rt.block_on(session::rollback(&backend, &engine))?;
    finish(&run, args.run.json)
}
