//! Applying a plan: the DAG [`walker`], rollback, resume after a crash, progress [`events`],
//! the [`report`], and the [`session`] functions that tie them to the state backend (lock,
//! journal, last applied configuration).

pub mod events;
pub mod exec;
pub mod probe;
pub mod report;
pub mod session;
pub mod walker;

use crate::model::Observed;
use crate::plan::Plan;
use crate::state::journal::{self, JournalSink, Outcome, PlanRecord, Record, JOURNAL_VERSION};
use crate::state::StateError;
use events::{Event, EventSink};
pub use exec::ExecContext;
use report::{ApplyReport, RollbackSummary};
use std::collections::HashSet;
use std::sync::Arc;
use walker::{ForwardEnd, Shared, Walker};
pub use walker::{OnFailure, WalkOptions};

/// Why an apply, resume or rollback could not run (a failed step is not an error: it shows
/// in the report's outcome).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ApplyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
    /// The configuration differs from the one the interrupted apply ran with.
    #[error("the configuration changed since the interrupted apply {apply_id} started")]
    #[diagnostic(
        code(smig::apply::config_changed),
        help("restore the configuration it ran with, or `smig rollback` to undo what it did")
    )]
    ConfigChanged { apply_id: String },
    /// Discovery failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Discover(#[from] crate::discover::DiscoverError),
    /// The landscape changed between planning and taking the lock.
    #[error(
        "the discovered landscape changed since the plan was made (another apply may have run)"
    )]
    #[diagnostic(
        code(smig::apply::landscape_changed),
        help("nothing was applied; run `smig plan` again and review the new plan")
    )]
    LandscapeChanged,
    /// The journal's header is missing or unusable.
    #[error("the journal has no usable plan")]
    #[diagnostic(code(smig::apply::journal_plan))]
    NoPlan,
}

/// Identity of an apply, recorded in its journal header.
#[derive(Debug, Clone, Default)]
pub struct ApplyMeta {
    pub apply_id: String,
    pub config_fingerprint: Option<String>,
    pub observed_fingerprint: Option<String>,
}

impl ApplyMeta {
    /// A fresh apply id (time-ordered, unique per process).
    pub fn new_id() -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}-{:04x}",
            now.as_secs(),
            (now.subsec_nanos() ^ std::process::id()) & 0xffff
        )
    }
}

/// Runs plans through drivers, journaling to a sink and reporting events.
pub struct Engine {
    pub ctx: ExecContext,
    pub events: EventSink,
    pub options: WalkOptions,
    /// What discovery read just before [`Engine::apply`], under the apply's lock: the walk's
    /// first checks start from it instead of reading it again.
    pub discovered: Option<Arc<Observed>>,
}

/// A finished run: its report and the journal sink, for the caller to close.
pub struct Run {
    pub report: ApplyReport,
    pub journal: Box<dyn JournalSink>,
}

impl Engine {
    fn walker(&self) -> Walker {
        Walker {
            ctx: self.ctx.clone(),
            options: self.options.clone(),
        }
    }

    /// Applies `plan`, starting a new journal in `journal` (which must be empty).
    pub async fn apply(
        &self,
        plan: &Plan,
        journal: Box<dyn JournalSink>,
        meta: &ApplyMeta,
    ) -> Result<Run, ApplyError> {
        let shared = Arc::new(Shared::new(journal, self.events.clone()));
        shared.record(
            Record::ApplyStarted {
                version: JOURNAL_VERSION,
                apply_id: meta.apply_id.clone(),
                config_fingerprint: meta.config_fingerprint.clone(),
                observed_fingerprint: meta.observed_fingerprint.clone(),
                plan: PlanRecord::from_plan(plan),
            },
            Some(Event::ApplyStarted {
                apply_id: meta.apply_id.clone(),
                command: "apply".into(),
                steps: plan.graph.node_count(),
                parallelism: self.options.parallelism,
            }),
        )?;
        let seed = self.discovered.as_deref();
        self.drive("apply", &meta.apply_id, plan, shared, &HashSet::new(), seed)
            .await
    }

    /// Continues the interrupted apply journaled in `journal` (reopened, entries loaded).
    pub async fn resume(&self, journal: Box<dyn JournalSink>) -> Result<Run, ApplyError> {
        let (apply_id, plan, done) = {
            let entries = journal.entries();
            let (id, rec) = journal::header(entries).ok_or(ApplyError::NoPlan)?;
            let plan = rec.to_plan().ok_or(ApplyError::NoPlan)?;
            (id.to_string(), plan, walker::done_steps(entries))
        };
        let shared = Arc::new(Shared::new(journal, self.events.clone()));
        shared.record(
            Record::Reopened {
                command: "resume".into(),
            },
            Some(Event::ApplyStarted {
                apply_id: apply_id.clone(),
                command: "resume".into(),
                steps: plan.graph.node_count(),
                parallelism: self.options.parallelism,
            }),
        )?;
        self.drive("resume", &apply_id, &plan, shared, &done, None)
            .await
    }

    /// Undoes what the journaled apply did.
    pub async fn rollback(&self, journal: Box<dyn JournalSink>) -> Result<Run, ApplyError> {
        let (apply_id, plan) = {
            let entries = journal.entries();
            let (id, rec) = journal::header(entries).ok_or(ApplyError::NoPlan)?;
            (id.to_string(), rec.to_plan().ok_or(ApplyError::NoPlan)?)
        };
        let shared = Arc::new(Shared::new(journal, self.events.clone()));
        shared.record(
            Record::Reopened {
                command: "rollback".into(),
            },
            Some(Event::ApplyStarted {
                apply_id: apply_id.clone(),
                command: "rollback".into(),
                steps: plan.graph.node_count(),
                parallelism: 1,
            }),
        )?;
        let reason = "requested with `smig rollback`".to_string();
        let (outcome, summary) = self.roll_back(&plan, &shared, reason).await?;
        self.finish(
            "rollback",
            &apply_id,
            &plan,
            shared,
            outcome,
            None,
            Some(summary),
        )
        .await
    }

    async fn roll_back(
        &self,
        plan: &Plan,
        shared: &Arc<Shared>,
        reason: String,
    ) -> Result<(Outcome, RollbackSummary), ApplyError> {
        shared.record(
            Record::RollbackStarted {
                reason: reason.clone(),
            },
            Some(Event::RollbackStarted { reason }),
        )?;
        let end = self.walker().rollback(plan, shared).await;
        if let Some(e) = end.journal_error {
            return Err(e.into());
        }
        shared.emit(Event::RollbackDone {
            undone: end.undone,
            stopped_at: end.stopped_at.clone(),
        });
        let outcome = if end.stopped_at.is_some() {
            Outcome::Halted
        } else {
            Outcome::RolledBack
        };
        Ok((
            outcome,
            RollbackSummary {
                undone: end.undone,
                stopped_at: end.stopped_at,
            },
        ))
    }

    async fn drive(
        &self,
        command: &str,
        apply_id: &str,
        plan: &Plan,
        shared: Arc<Shared>,
        done_before: &HashSet<usize>,
        seed: Option<&Observed>,
    ) -> Result<Run, ApplyError> {
        let mut walker = self.walker();
        let end = walker.forward(plan, &shared, done_before, seed).await;
        let (outcome, error, summary) = match end {
            ForwardEnd::Completed => (Outcome::Succeeded, None, None),
            ForwardEnd::Failed { key, error } => {
                let error = format!("{key}: {error}");
                match self.options.on_failure {
                    OnFailure::Halt => (Outcome::Halted, Some(error), None),
                    OnFailure::Rollback => {
                        let (o, s) = self
                            .roll_back(plan, &shared, format!("step {error}"))
                            .await?;
                        (o, Some(error), Some(s))
                    }
                }
            }
            ForwardEnd::Interrupted { reason } => (Outcome::Interrupted, Some(reason), None),
            ForwardEnd::Crashed => {
                let report = ApplyReport::build(
                    plan,
                    apply_id,
                    command,
                    Outcome::Interrupted,
                    shared.elapsed_ms(),
                    Some("stopped by the crash-test hook".into()),
                    &shared.timings(),
                    None,
                );
                let journal = shared.take_journal();
                return Ok(Run { report, journal });
            }
            ForwardEnd::Journal(e) => return Err(e.into()),
        };
        self.finish(command, apply_id, plan, shared, outcome, error, summary)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        command: &str,
        apply_id: &str,
        plan: &Plan,
        shared: Arc<Shared>,
        outcome: Outcome,
        mut error: Option<String>,
        summary: Option<RollbackSummary>,
    ) -> Result<Run, ApplyError> {
        // What drivers left running in the background ends before the run does.
        if let Err(e) = self.ctx.drivers.network.settle().await {
            error.get_or_insert_with(|| format!("after the steps: {e}"));
        }
        let ms = shared.elapsed_ms();
        shared.record(
            Record::Finished { outcome },
            Some(Event::ApplyDone {
                outcome,
                duration_ms: ms,
            }),
        )?;
        let report = ApplyReport::build(
            plan,
            apply_id,
            command,
            outcome,
            ms,
            error,
            &shared.timings(),
            summary,
        );
        let journal = shared.take_journal();
        Ok(Run { report, journal })
    }
}
