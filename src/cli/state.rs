//! `smig state list|show|unlock`: what the state directory holds: the lock (and whether its
//! process is gone), the unfinished apply, the last applied configuration, past applies.

use super::apply::state_dir;
use super::{print, Exit};
use crate::state::journal::{self, JournalEntry, Record};
use crate::state::local::LocalState;
use crate::state::{StateBackend, StateError};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: StateCommand,
    /// State directory (default: .smig in the configuration directory).
    #[arg(long = "state", value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,
    /// Configuration directory whose .smig to use.
    #[arg(long = "dir", value_name = "DIR", global = true, default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum StateCommand {
    /// The lock, the unfinished apply, the last applied configuration and past applies.
    List,
    /// The journal of the unfinished apply, or of a past one.
    Show {
        /// A past apply's id (see `smig state list`).
        apply_id: Option<String>,
        /// Print the journal lines as they are stored (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Remove the lock; needs its id, as `smig state list` shows it.
    Unlock { lock_id: String },
}

fn line(e: &JournalEntry) -> String {
    let what = match &e.record {
        Record::ApplyStarted { apply_id, plan, .. } => {
            format!("apply {apply_id} started: {} steps", plan.steps.len())
        }
        Record::Reopened { command } => format!("reopened by {command}"),
        Record::StepStarted { key, .. } => format!("started   {key}"),
        Record::StepDone {
            key, duration_ms, ..
        } => format!("done      {key} ({duration_ms} ms)"),
        Record::StepSkipped { key, reason, .. } => format!("skipped   {key} ({reason})"),
        Record::StepFailed { key, error, .. } => format!("FAILED    {key}: {error}"),
        Record::RollbackStarted { reason } => format!("rollback started: {reason}"),
        Record::UndoStarted { key, .. } => format!("undo      {key}"),
        Record::UndoDone {
            key, duration_ms, ..
        } => format!("undone    {key} ({duration_ms} ms)"),
        Record::UndoSkipped { key, reason, .. } => format!("not undone {key} ({reason})"),
        Record::UndoFailed { key, error, .. } => format!("UNDO FAILED {key}: {error}"),
        Record::PointOfNoReturn { key, reason, .. } => {
            format!("point of no return {key}: {reason}")
        }
        Record::GuardBlocked { vm, host } => {
            format!("blocked {vm} on {host} before removing IPsec")
        }
        Record::SweepDone { vm, host } => format!("removed rollback's block of {vm} on {host}"),
        Record::Interrupted { reason } => format!("interrupted: {reason}"),
        Record::Finished { outcome } => format!(
            "finished: {}",
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
    };
    format!("{:>5}  {}  {what}\n", e.seq, e.at)
}

fn list(backend: &LocalState) -> miette::Result<String> {
    let mut out = format!("State directory: {}\n", backend.location());
    match backend.current_lock()? {
        Some(l) if l.is_stale() => out.push_str(&format!(
            "Lock: STALE, held by {} whose process is gone; remove it with `smig state unlock {}`\n",
            l.describe(),
            l.id
        )),
        Some(l) => out.push_str(&format!("Lock: held by {}\n", l.describe())),
        None => out.push_str("Lock: none\n"),
    }
    match backend.read_journal()? {
        Some(entries) => {
            let id = journal::header(&entries).map_or("?", |(id, _)| id);
            let count = |f: fn(&Record) -> bool| entries.iter().filter(|e| f(&e.record)).count();
            let done = count(|r| matches!(r, Record::StepDone { .. }));
            let failed = count(|r| matches!(r, Record::StepFailed { .. }));
            let undone = count(|r| matches!(r, Record::UndoDone { .. }));
            let state = match journal::outcome(&entries) {
                Some(o) => serde_json::to_value(o)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                None => "in flight or crashed".into(),
            };
            out.push_str(&format!(
                "Unfinished apply: {id} ({state}; {done} steps done, {failed} failed, {undone} undone, started {})\n  `smig apply --resume` continues it, `smig rollback` undoes it\n",
                entries.first().map_or("", |e| e.at.as_str())
            ));
        }
        None => out.push_str("Unfinished apply: none\n"),
    }
    match backend.read_state()?.last_applied {
        Some(a) => out.push_str(&format!(
            "Last applied: {} at {} (configuration {})\n",
            a.apply_id,
            a.finished_at,
            a.config_fingerprint
                .as_deref()
                .map_or("unknown", |f| &f[..f.len().min(16)])
        )),
        None => out.push_str("Last applied: never\n"),
    }
    let history = backend.history()?;
    if !history.is_empty() {
        out.push_str(&format!("Past applies: {}\n", history.join(", ")));
    }
    Ok(out)
}

pub fn run(args: Args) -> miette::Result<Exit> {
    let backend = LocalState::new(state_dir(args.state.as_deref(), &args.dir));
    match args.command {
        StateCommand::List => print(&list(&backend)?)?,
        StateCommand::Show { apply_id, json } => {
            let (path, entries) = match apply_id {
                Some(id) => {
                    let p = backend.history_dir().join(format!("{id}.jsonl"));
                    if !p.is_file()
                        && backend
                            .read_journal()?
                            .is_some_and(|e| journal::header(&e).is_some_and(|(j, _)| j == id))
                    {
                        (
                            backend.journal_path(),
                            journal::read(&backend.journal_path())?,
                        )
                    } else {
                        let e = journal::read(&p)?;
                        (p, e)
                    }
                }
                None => match backend.read_journal()? {
                    Some(e) => (backend.journal_path(), e),
                    None => {
                        return Err(StateError::NoJournal {
                            action: "show".into(),
                        }
                        .into())
                    }
                },
            };
            if json {
                let text = std::fs::read_to_string(&path).map_err(|e| StateError::Io {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                print(&text)?;
            } else {
                print(&entries.iter().map(line).collect::<String>())?;
            }
        }
        StateCommand::Unlock { lock_id } => {
            let lock = backend.unlock(&lock_id)?;
            print(&format!(
                "Removed the lock {} held by {}\n",
                lock.id,
                lock.describe()
            ))?;
        }
    }
    Ok(Exit::Success)
}
