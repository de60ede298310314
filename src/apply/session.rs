//! Apply, resume and rollback against a state backend: take the lock, check for an unfinished
//! journal, run, record the last applied configuration, archive the journal, release the lock.

use super::{ApplyError, ApplyMeta, Engine, Run};
use crate::discover::Discover;
use crate::model::Landscape;
use crate::plan::Plan;
use crate::state::journal::{self, Outcome, Record};
use crate::state::{now_rfc3339, Applied, LockInfo, StateBackend, StateError};

/// Releases the lock when dropped, unless the run simulated a crash.
struct LockGuard<'a> {
    backend: &'a dyn StateBackend,
    lock: Option<LockInfo>,
}

impl LockGuard<'_> {
    /// Keeps the lock in place, as a process that died would.
    fn leak(&mut self) {
        self.lock = None;
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.lock.take() {
            let _ = self.backend.release(&l);
        }
    }
}

fn take_lock<'a>(
    backend: &'a dyn StateBackend,
    command: &str,
) -> Result<LockGuard<'a>, StateError> {
    let lock = backend.lock(command)?;
    Ok(LockGuard {
        backend,
        lock: Some(lock),
    })
}

/// Takes the lock for a command that continues or undoes an interrupted apply (`apply
/// --resume`, `rollback`): a lock whose holder is known to be gone (same host, no such
/// process: the interrupted apply itself, e.g. killed) is taken over instead of refused.
fn take_over_lock<'a>(
    backend: &'a dyn StateBackend,
    command: &str,
) -> Result<LockGuard<'a>, StateError> {
    match take_lock(backend, command) {
        Err(StateError::StaleLock { lock }) => {
            backend.unlock(&lock.id)?;
            take_lock(backend, command)
        }
        r => r,
    }
}

/// The unfinished journal, if any; a finished one left behind is archived.
fn unfinished(
    backend: &dyn StateBackend,
) -> Result<Option<Vec<journal::JournalEntry>>, StateError> {
    let Some(entries) = backend.read_journal()? else {
        return Ok(None);
    };
    let id = journal::header(&entries)
        .map(|(id, _)| id.to_string())
        .unwrap_or_default();
    if journal::outcome(&entries).is_some_and(Outcome::is_final) {
        backend.archive_journal(&id)?;
        return Ok(None);
    }
    Ok(Some(entries))
}

fn close(
    backend: &dyn StateBackend,
    run: &Run,
    guard: &mut LockGuard<'_>,
    config_fingerprint: Option<String>,
    observed_fingerprint: Option<String>,
) -> Result<(), ApplyError> {
    let entries = run.journal.entries();
    let finished = journal::outcome(entries);
    if finished.is_none() {
        // The crash-test hook stopped the run without a final record: leave journal and lock.
        guard.leak();
        return Ok(());
    }
    if finished == Some(Outcome::Succeeded) {
        let mut state = backend.read_state()?;
        state.last_applied = Some(Applied {
            apply_id: run.report.apply_id.clone(),
            config_fingerprint,
            observed_fingerprint,
            finished_at: now_rfc3339(),
        });
        backend.write_state(&state)?;
    }
    if finished.is_some_and(Outcome::is_final) {
        backend.archive_journal(&run.report.apply_id)?;
    }
    Ok(())
}

/// `smig apply`: refuses when an apply is unfinished; otherwise runs `plan`.
pub async fn apply(
    backend: &dyn StateBackend,
    engine: &Engine,
    plan: &Plan,
    meta: &ApplyMeta,
) -> Result<Run, ApplyError> {
    apply_checked(backend, engine, plan, meta, None).await
}

/// Like [`apply`]; with `recheck`, discovers again once the lock is held and refuses when the
/// landscape is no longer the one the plan was made from (another apply got there first).
pub async fn apply_checked(
    backend: &dyn StateBackend,
    engine: &Engine,
    plan: &Plan,
    meta: &ApplyMeta,
    recheck: Option<(&dyn Discover, &Landscape)>,
) -> Result<Run, ApplyError> {
    let lock = lock_for_apply(backend)?;
    if let (Some((discover, landscape)), Some(planned)) = (recheck, &meta.observed_fingerprint) {
        let now = discover.discover(landscape).await?;
        if &crate::planfile::observed_fingerprint(&now) != planned {
            return Err(ApplyError::LandscapeChanged);
        }
    }
    apply_locked(lock, engine, plan, meta).await
}

/// The state lock of an apply, taken before its discovery so that no other apply changes the
/// landscape between the discovery a plan is checked against (or made from) and the run.
/// Released when dropped.
pub struct ApplyLock<'a>(LockGuard<'a>);

/// Takes the state lock for `smig apply`.
pub fn lock_for_apply(backend: &dyn StateBackend) -> Result<ApplyLock<'_>, StateError> {
    Ok(ApplyLock(take_lock(backend, "apply")?))
}

/// Runs `plan` under a lock taken with [`lock_for_apply`] before the discovery the plan was
/// made from or checked against: no second discovery is needed.
pub async fn apply_locked(
    lock: ApplyLock<'_>,
    engine: &Engine,
    plan: &Plan,
    meta: &ApplyMeta,
) -> Result<Run, ApplyError> {
    let mut guard = lock.0;
    let backend = guard.backend;
    // A state file smig cannot read stops everything before any change.
    backend.read_state()?;
    if let Some(entries) = unfinished(backend)? {
        let apply_id = journal::header(&entries)
            .map(|(id, _)| id.to_string())
            .unwrap_or_default();
        return Err(StateError::Unfinished {
            apply_id,
            path: backend.location(),
        }
        .into());
    }
    let sink = backend.create_journal()?;
    let run = engine.apply(plan, sink, meta).await?;
    close(
        backend,
        &run,
        &mut guard,
        meta.config_fingerprint.clone(),
        meta.observed_fingerprint.clone(),
    )?;
    Ok(run)
}

/// `smig apply --resume`: continues the unfinished apply. With `config_fingerprint`, refuses
/// when the configuration is not the one the apply started with.
pub async fn resume(
    backend: &dyn StateBackend,
    engine: &Engine,
    config_fingerprint: Option<&str>,
) -> Result<Run, ApplyError> {
    let mut guard = take_over_lock(backend, "apply --resume")?;
    backend.read_state()?;
    let Some(entries) = unfinished(backend)? else {
        return Err(StateError::NoJournal {
            action: "resume".into(),
        }
        .into());
    };
    let (apply_id, journal_config) = match entries.first().map(|e| &e.record) {
        Some(Record::ApplyStarted {
            apply_id,
            config_fingerprint,
            ..
        }) => (apply_id.clone(), config_fingerprint.clone()),
        _ => return Err(ApplyError::NoPlan),
    };
    if let (Some(now), Some(then)) = (config_fingerprint, journal_config.as_deref()) {
        if now != then {
            return Err(ApplyError::ConfigChanged { apply_id });
        }
    }
    let sink = backend.reopen_journal()?;
    let run = engine.resume(sink).await?;
    let observed = match entries.first().map(|e| &e.record) {
        Some(Record::ApplyStarted {
            observed_fingerprint,
            ..
        }) => observed_fingerprint.clone(),
        _ => None,
    };
    close(backend, &run, &mut guard, journal_config, observed)?;
    Ok(run)
}

/// `smig rollback`: undoes what the unfinished apply did.
pub async fn rollback(backend: &dyn StateBackend, engine: &Engine) -> Result<Run, ApplyError> {
    let mut guard = take_over_lock(backend, "rollback")?;
    backend.read_state()?;
    if unfinished(backend)?.is_none() {
        return Err(StateError::NoJournal {
            action: "roll back".into(),
        }
        .into());
    }
    let sink = backend.reopen_journal()?;
    let run = engine.rollback(sink).await?;
    close(backend, &run, &mut guard, None, None)?;
    Ok(run)
}
