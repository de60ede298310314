//! The way from command-line inputs to a plan document: read the configuration, load it,
//! discover what runs, plan. Each stage returns miette reports; nothing here renders.

use super::inputs::{self, Input, VarArgs};
use super::{CliError, ConfigArgs};
use crate::config::{self, Mode, SourceFile, VarInputs};
use crate::discover::snapshot::Snapshot;
use crate::discover::Discover;
use crate::drivers::{real, Drivers};
use crate::model::{Landscape, Observed};
use crate::plan::{self, PlanError, PlanOptions};
use crate::planfile::{self, Fingerprints, PlanFile};
use std::path::Path;

/// A loaded configuration and its fingerprint.
#[derive(Debug)]
pub struct Loaded {
    pub landscape: Landscape,
    pub fingerprint: String,
    /// What loading worked with; a command that exits next leaves it to the exit.
    pub scratch: config::Scratch,
}

/// The loader's view of an input file.
pub fn source_file(input: &Input) -> SourceFile {
    SourceFile::new(input.name(), input.text.clone())
}

/// The loader's view of the variable inputs.
pub fn var_inputs(vars: &VarArgs) -> VarInputs {
    VarInputs {
        cli: vars.cli.clone(),
        files: vars.files.iter().map(source_file).collect(),
        env: vars.env.clone(),
    }
}

/// Reads and loads the configuration named by `args`, with variables from the arguments and
/// the process environment.
pub fn load(args: &ConfigArgs, mode: Mode) -> miette::Result<Loaded> {
    let sources = inputs::read_config(&args.dir)?;
    let vars = inputs::read_vars(&args.vars, &args.var_files, std::env::vars_os())?;
    let fingerprint = inputs::config_fingerprint(&sources, &vars);
    let files: Vec<SourceFile> = sources.iter().map(source_file).collect();
    let (landscape, scratch) = config::load_keeping_scratch(&files, &var_inputs(&vars), mode);
    Ok(Loaded {
        landscape: landscape?,
        fingerprint,
        scratch,
    })
}

/// Runs discovery from a recorded snapshot. `Discover` is async; the command layer owns the
/// runtime (a small current-thread one), never the planning code.
pub fn discover(snapshot: &Path, landscape: &Landscape) -> miette::Result<Observed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime {
            reason: e.to_string(),
        })?;
    let discovery = Snapshot::new(snapshot);
    Ok(runtime.block_on(discovery.discover(landscape))?)
}

/// The real drivers for `landscape`, with the settings from the environment
/// (`crate::drivers::real`).
pub fn real_drivers(landscape: &Landscape) -> miette::Result<Drivers> {
    let options = real::RealOptions::from_env()?;
    Ok(real::drivers(landscape, &options)?)
}

/// Discovers the running landscape through the real drivers.
pub fn discover_live(landscape: &Landscape) -> miette::Result<Observed> {
    let drivers = real_drivers(landscape)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime {
            reason: e.to_string(),
        })?;
    Ok(runtime.block_on(drivers.discover(landscape))?)
}

/// A plan document, and the error that refuses it when it breaks an invariant (the document
/// is still shown, so the reviewer sees why).
pub struct Planned {
    pub doc: PlanFile,
    pub refused: Option<miette::Report>,
}

/// Plans `loaded` against `observed`.
pub fn plan(
    loaded: &Loaded,
    observed: &Observed,
    targets: &[String],
    excludes: &[String],
) -> miette::Result<Planned> {
    let options = PlanOptions {
        targets: targets.to_vec(),
        excludes: excludes.to_vec(),
    };
    // The discovered landscape's fingerprint is worked out beside the build: both only read.
    let (observed_fingerprint, built) = std::thread::scope(|scope| {
        let fingerprint = std::thread::Builder::new()
            .spawn_scoped(scope, || planfile::observed_fingerprint(observed));
        let built = plan::build(&loaded.landscape, observed, &options);
        let fingerprint = match fingerprint.map(|t| t.join()) {
            Ok(Ok(f)) => f,
            _ => planfile::observed_fingerprint(observed),
        };
        (fingerprint, built)
    });
    let fingerprints = Fingerprints {
        config: loaded.fingerprint.clone(),
        observed: observed_fingerprint,
    };
    match built {
        Ok(p) => Ok(Planned {
            doc: PlanFile::new(p, fingerprints).with_targeting(targets, excludes),
            refused: None,
        }),
        Err(PlanError::InvariantViolated { report, plan }) => {
            let doc =
                PlanFile::new((*plan).clone(), fingerprints).with_targeting(targets, excludes);
            Ok(Planned {
                doc,
                refused: Some(PlanError::InvariantViolated { report, plan }.into()),
            })
        }
        Err(e) => Err(e.into()),
    }
}
