//! The DAG walker: runs a plan's steps on tokio, at most `parallelism` at a time, each once its
//! dependencies succeeded; journals every transition before acting on it; on a failure launches
//! nothing new, lets running steps finish, and rolls back completed steps in reverse completion
//! order through their inverses.
//!
//! Rules the walker keeps on its own, whatever the plan says:
//! - a step whose effect already holds (fresh discovery) is skipped as "already satisfied";
//! - a step whose precondition does not hold fails without acting;
//! - after acting, the step's effect must hold, else the step failed;
//! - these checks read the landscape; what was read since the last action of any step ended
//!   is not read twice ([`Readings`]);
//! - rollback asks the landscape before each undo (an undo whose effect holds is skipped), stops
//!   at a completed point of no return (keeping it and what it depends on), never removes an
//!   IPsec connection while a moved VM using it is unblocked on either end (it blocks the VM
//!   first: fail closed), and at the end removes the block rules it added on hosts the VM has
//!   left again.

use super::events::{Event, EventSink};
use super::exec::{perform, ExecContext};
use super::probe::{self, action_holds, action_queries, fact_queries, Locator, Query, Readings};
use crate::drivers::{AbortHandle, AbortSignal, MigrationProgress, ProgressSink};
use crate::model::{DomainState, HostId, Name, Observed};
use crate::plan::{Action, Inverse, Plan, Step};
use crate::state::journal::{JournalEntry, JournalSink, Record};
use crate::state::StateError;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What to do when a step fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Undo the completed steps (default).
    #[default]
    Rollback,
    /// Stop where it is, fail closed (the VM stays blocked).
    Halt,
}

/// Interrupt levels sent on the walker's interrupt channel (Ctrl-C count).
pub const INTERRUPT_STOP: u8 = 1;
/// Second Ctrl-C: abort running steps and return at once.
pub const INTERRUPT_NOW: u8 = 2;

/// How long running steps get to abort cleanly after [`INTERRUPT_NOW`] before they are dropped.
pub const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Walker settings.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub parallelism: usize,
    pub on_failure: OnFailure,
    /// Crash-test hook: stop dead (drop running steps, journal nothing more) once this many
    /// steps finished, as if the process had died.
    pub stop_after_steps: Option<usize>,
    /// Interrupts: [`INTERRUPT_STOP`], then [`INTERRUPT_NOW`].
    pub interrupt: Option<watch::Receiver<u8>>,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            parallelism: 4,
            on_failure: OnFailure::Rollback,
            stop_after_steps: None,
            interrupt: None,
        }
    }
}

/// Timing of one step as this process saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepTiming {
    pub step: usize,
    pub status: StepStatus,
    /// Milliseconds since the walk started.
    pub started_ms: u64,
    pub finished_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    Skipped,
    Failed,
    Undone,
    UndoSkipped,
    UndoFailed,
}

/// How the forward walk ended.
#[derive(Debug)]
pub enum ForwardEnd {
    Completed,
    Failed {
        key: String,
        error: String,
    },
    Interrupted {
        reason: String,
    },
    /// The crash-test hook fired: nothing more was journaled.
    Crashed,
    Journal(StateError),
}

/// How a rollback ended.
#[derive(Debug, Default)]
pub struct RollbackEnd {
    pub undone: usize,
    /// Where it stopped early: a point of no return, or an undo that failed.
    pub stopped_at: Option<String>,
    pub journal_error: Option<StateError>,
}

/// State shared by the coordinator and the step tasks.
pub struct Shared {
    journal: Mutex<Box<dyn JournalSink>>,
    events: EventSink,
    t0: Instant,
    timings: Mutex<Vec<StepTiming>>,
}

impl Shared {
    pub fn new(journal: Box<dyn JournalSink>, events: EventSink) -> Self {
        Shared {
            journal: Mutex::new(journal),
            events,
            t0: Instant::now(),
            timings: Mutex::new(Vec::new()),
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Box<dyn JournalSink>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a journal record, then (only once it is durable) emits the event.
    pub fn record(&self, record: Record, event: Option<Event>) -> Result<(), StateError> {
        // Write under the lock (entries stay in order), make durable outside it.
        let sync = self.journal().write(record)?;
        if let Some(sync) = sync {
            sync()?;
        }
        if let Some(e) = event {
            (self.events)(&e);
        }
        Ok(())
    }

    pub fn emit(&self, event: Event) {
        (self.events)(&event);
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.journal().entries().to_vec()
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn time(&self, step: usize, status: StepStatus, started: Instant) {
        let t = StepTiming {
            step,
            status,
            started_ms: started.duration_since(self.t0).as_millis() as u64,
            finished_ms: self.elapsed_ms(),
        };
        self.timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
    }

    pub fn timings(&self) -> Vec<StepTiming> {
        self.timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gives the journal back (further records go nowhere durable).
    pub fn take_journal(&self) -> Box<dyn JournalSink> {
        let entries = self.journal().entries().to_vec();
        std::mem::replace(
            &mut *self.journal(),
            Box::new(crate::state::journal::MemoryJournal::from_entries(entries)),
        )
    }
}

enum StepResult {
    Succeeded,
    Failed(String),
    Journal(StateError),
}

/// The walker.
pub struct Walker {
    pub ctx: ExecContext,
    pub options: WalkOptions,
}

impl Walker {
    /// Walks the plan forward. `done_before`: steps an earlier run journaled as done; they are
    /// accepted when fresh discovery agrees (their effect holds, or a later done step explains
    /// why it no longer does), else run again.
    /// `seed`: what discovery read just before, while no step acted (see [`Readings::seeded`]).
    pub async fn forward(
        &mut self,
        plan: &Plan,
        shared: &Arc<Shared>,
        done_before: &HashSet<usize>,
        seed: Option<&Observed>,
    ) -> ForwardEnd {
        let g = &plan.graph;
        let n = g.node_count();
        let locator = Locator::from_actions(g.node_weights().map(|s| &s.action));
        let readings = match seed {
            Some(o) => {
                let mut q = BTreeSet::new();
                for s in g.node_weights() {
                    check_queries(s, &locator, &mut q);
                }
                Readings::seeded(o, q)
            }
            None => Readings::default(),
        };
        let checks = Arc::new(Checks { locator, readings });
        let mut waiting: Vec<usize> = (0..n)
            .map(|i| {
                g.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
                    .count()
            })
            .collect();
        // Done steps with a done descendant: their effect may have been superseded.
        let superseded: HashSet<usize> = done_before
            .iter()
            .copied()
            .filter(|&i| {
                let mut dfs = petgraph::visit::Dfs::new(g, NodeIndex::new(i));
                std::iter::from_fn(|| dfs.next(g))
                    .any(|d| d.index() != i && done_before.contains(&d.index()))
            })
            .collect();
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
        let (abort_handle, abort): (AbortHandle, AbortSignal) = AbortSignal::new();
        let mut running: JoinSet<(usize, StepResult)> = JoinSet::new();
        let mut failure: Option<(String, String)> = None;
        let mut interrupted: Option<String> = None;
        let mut journal_error: Option<StateError> = None;
        let mut finished = 0usize;
        let parallelism = self.options.parallelism.max(1);
        let mut interrupt = self.options.interrupt.take();

        loop {
            while failure.is_none()
                && interrupted.is_none()
                && journal_error.is_none()
                && running.len() < parallelism
            {
                let Some(Reverse(i)) = ready.pop() else { break };
                let step = g[petgraph::graph::NodeIndex::new(i)].clone();
                let accept_done = if done_before.contains(&i) {
                    Some(superseded.contains(&i))
                } else {
                    None
                };
                running.spawn(run_step(
                    shared.clone(),
                    self.ctx.clone(),
                    checks.clone(),
                    i,
                    step,
                    accept_done,
                    abort.clone(),
                ));
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                joined = running.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (i, result) = match joined {
                        Ok(r) => r,
                        Err(e) => {
                            failure.get_or_insert(("(a step task)".into(), format!("step task ended abnormally: {e}")));
                            continue;
                        }
                    };
                    match result {
                        StepResult::Succeeded => {
                            finished += 1;
                            for s in g.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing) {
                                let s = s.index();
                                waiting[s] -= 1;
                                if waiting[s] == 0 {
                                    ready.push(Reverse(s));
                                }
                            }
                            if self.options.stop_after_steps.is_some_and(|k| finished >= k) {
                                running.abort_all();
                                while running.join_next().await.is_some() {}
                                return ForwardEnd::Crashed;
                            }
                        }
                        StepResult::Failed(error) => {
                            let key = g[petgraph::graph::NodeIndex::new(i)].key.clone();
                            failure.get_or_insert((key, error));
                        }
                        StepResult::Journal(e) => {
                            journal_error.get_or_insert(e);
                        }
                    }
                }
                level = next_interrupt(&mut interrupt) => {
                    if level >= INTERRUPT_NOW {
                        // Tell running drivers to abort (a migration aborts its libvirt job and
                        // leaves the domain on the source); give them a moment to journal it.
                        abort_handle.abort();
                        let grace = tokio::time::sleep(ABORT_GRACE);
                        tokio::pin!(grace);
                        loop {
                            tokio::select! {
                                j = running.join_next() => if j.is_none() { break },
                                _ = &mut grace => {
                                    running.abort_all();
                                    while running.join_next().await.is_some() {}
                                    break;
                                }
                            }
                        }
                        let reason = "interrupted twice: running steps were aborted".to_string();
                        if let Err(e) = shared.record(
                            Record::Interrupted { reason: reason.clone() },
                            Some(Event::Interrupted { reason: reason.clone() }),
                        ) {
                            return ForwardEnd::Journal(e);
                        }
                        return ForwardEnd::Interrupted { reason };
                    }
                    if interrupted.is_none() {
                        let reason = "interrupted: no new steps are started; running steps finish".to_string();
                        shared.emit(Event::Interrupted { reason: reason.clone() });
                        interrupted = Some(reason);
                    }
                }
            }
        }
        if let Some(e) = journal_error {
            return ForwardEnd::Journal(e);
        }
        if let Some((key, error)) = failure {
            return ForwardEnd::Failed { key, error };
        }
        if let Some(reason) = interrupted {
            if let Err(e) = shared.record(
                Record::Interrupted {
                    reason: reason.clone(),
                },
                None,
            ) {
                return ForwardEnd::Journal(e);
            }
            return ForwardEnd::Interrupted { reason };
        }
        ForwardEnd::Completed
    }

    /// Undoes, newest first, what the journal says this apply did, checking the landscape
    /// before each undo. Sequential on purpose: rollback favours safety over speed.
    pub async fn rollback(&mut self, plan: &Plan, shared: &Arc<Shared>) -> RollbackEnd {
        let mut end = RollbackEnd::default();
        if let Err(e) = self.rollback_inner(plan, shared, &mut end).await {
            end.journal_error = Some(e);
        }
        end
    }

    async fn rollback_inner(
        &mut self,
        plan: &Plan,
        shared: &Arc<Shared>,
        end: &mut RollbackEnd,
    ) -> Result<(), StateError> {
        let g = &plan.graph;
        let entries = shared.entries();
        let candidates = undo_candidates(&entries);
        let locator = Locator::from_actions(g.node_weights().map(|s| &s.action));
        let mut kept: HashSet<usize> = HashSet::new();
        let mut added_blocks: Vec<(String, HostId)> = Vec::new();
        let abort = AbortSignal::never();
        for (i, completed) in candidates {
            let Some(step) = g.node_weight(NodeIndex::new(i)) else {
                continue;
            };
            let key = step.key.clone();
            let skip = |reason: &str| {
                (
                    Record::UndoSkipped {
                        step: i,
                        key: key.clone(),
                        reason: reason.to_string(),
                    },
                    Some(Event::UndoSkipped {
                        step: i,
                        key: key.clone(),
                        reason: reason.to_string(),
                    }),
                )
            };
            if kept.contains(&i) {
                let (r, e) = skip("kept: a completed point of no return depends on it");
                shared.record(r, e)?;
                continue;
            }
            let action = match &step.inverse {
                Inverse::Nothing => {
                    let (r, e) = skip("nothing to undo");
                    shared.record(r, e)?;
                    continue;
                }
                Inverse::PointOfNoReturn { reason } => {
                    let took_effect = completed || {
                        let mut q = BTreeSet::new();
                        step.effect
                            .iter()
                            .for_each(|f| fact_queries(f, &locator, &mut q));
                        action_queries(&step.action, &mut q);
                        match probe::observe(&self.ctx.drivers, &q).await {
                            Ok(o) => effect_holds(step, &o),
                            Err(_) => true,
                        }
                    };
                    if !took_effect {
                        let (r, e) = skip("it did not take effect");
                        shared.record(r, e)?;
                        continue;
                    }
                    let mut dfs = petgraph::visit::Dfs::new(
                        petgraph::visit::Reversed(g),
                        petgraph::graph::NodeIndex::new(i),
                    );
                    while let Some(a) = dfs.next(petgraph::visit::Reversed(g)) {
                        kept.insert(a.index());
                    }
                    shared.record(
                        Record::PointOfNoReturn {
                            step: i,
                            key: key.clone(),
                            reason: reason.clone(),
                        },
                        None,
                    )?;
                    end.stopped_at.get_or_insert(key.clone());
                    continue;
                }
                Inverse::Action { action } => (**action).clone(),
            };
            if let Action::IpsecRemove {
                link,
                local,
                remote,
            } = &action
            {
                match self
                    .guard_ipsec_removal(plan, shared, link, [local, remote])
                    .await
                {
                    Ok(blocked) => added_blocks.extend(blocked),
                    Err(error) => {
                        shared.record(
                            Record::UndoFailed {
                                step: i,
                                key: key.clone(),
                                error: error.clone(),
                            },
                            Some(Event::UndoFailed {
                                step: i,
                                key: key.clone(),
                                error,
                            }),
                        )?;
                        end.stopped_at = Some(key);
                        return Ok(());
                    }
                }
            }
            let started = Instant::now();
            let mut q = BTreeSet::new();
            action_queries(&action, &mut q);
            let seen = probe::observe(&self.ctx.drivers, &q).await;
            let undone = match &seen {
                Ok(o) => action_holds(&action, o),
                Err(_) => probe::runs_where_it_came_from(&self.ctx.drivers, &action).await,
            };
            if undone {
                let (r, e) = skip("already undone");
                shared.record(r, e)?;
                shared.time(i, StepStatus::UndoSkipped, started);
                continue;
            }
            shared.record(
                Record::UndoStarted {
                    step: i,
                    key: key.clone(),
                },
                Some(Event::UndoStarted {
                    step: i,
                    key: key.clone(),
                }),
            )?;
            let noop: ProgressSink = Arc::new(|_| {});
            let mut result = perform(&self.ctx, &action, seen.as_ref().ok(), noop, abort.clone())
                .await
                .map_err(|e| e.to_string());
            if result.is_ok() {
                result = self.restore_running(step).await;
            }
            if result.is_ok() {
                result = match probe::observe(&self.ctx.drivers, &q).await {
                    Ok(o) if action_holds(&action, &o) => Ok(()),
                    Ok(_) => Err("the undo reported success but its effect does not hold".into()),
                    Err(e) => Err(format!("cannot verify the undo: {e}")),
                };
            }
            match result {
                Ok(()) => {
                    let ms = started.elapsed().as_millis() as u64;
                    shared.record(
                        Record::UndoDone {
                            step: i,
                            key: key.clone(),
                            duration_ms: ms,
                        },
                        Some(Event::UndoDone {
                            step: i,
                            key: key.clone(),
                            duration_ms: ms,
                        }),
                    )?;
                    shared.time(i, StepStatus::Undone, started);
                    end.undone += 1;
                    if let Action::Block { vm, host, .. } = &action {
                        added_blocks.push((vm.to_string(), host.clone()));
                    }
                }
                Err(error) => {
                    shared.record(
                        Record::UndoFailed {
                            step: i,
                            key: key.clone(),
                            error: error.clone(),
                        },
                        Some(Event::UndoFailed {
                            step: i,
                            key: key.clone(),
                            error,
                        }),
                    )?;
                    shared.time(i, StepStatus::UndoFailed, started);
                    end.stopped_at = Some(key);
                    return Ok(());
                }
            }
        }
        // Block rules rollback added (also in an earlier, interrupted rollback).
        for e in &entries {
            if let Record::GuardBlocked { vm, host } = &e.record {
                added_blocks.push((vm.clone(), HostId(host.as_str().into())));
            }
            if let Record::UndoDone { step, .. } = &e.record {
                if let Some(Action::Block { vm, host, .. }) = g
                    .node_weight(NodeIndex::new(*step))
                    .and_then(|s| s.inverse.as_action())
                {
                    added_blocks.push((vm.to_string(), host.clone()));
                }
            }
        }
        self.sweep(plan, shared, added_blocks).await
    }

    /// After undoing a step: a domain its precondition had running, now paused there (a
    /// paused domain stays paused when migrated back), is resumed, as before the step.
    async fn restore_running(&self, step: &Step) -> Result<(), String> {
        let Some(Action::Migrate { to, .. }) = step.inverse.as_action() else {
            return Ok(());
        };
        for f in &step.precondition {
            if let crate::plan::Fact::DomainRunning { domain, host } = f {
                if host != to {
                    continue;
                }
                let d = &self.ctx.drivers.hypervisor;
                let state = d.domain(host, domain).await.map_err(|e| e.to_string())?;
                if state.is_some_and(|s| s.state == DomainState::Paused) {
                    d.resume(host, domain).await.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Before an IPsec connection goes away: every VM of the link that the plan moves and that
    /// runs on either end gets blocked there, if it is not.
    async fn guard_ipsec_removal(
        &self,
        plan: &Plan,
        shared: &Arc<Shared>,
        link: &str,
        ends: [&HostId; 2],
    ) -> Result<Vec<(String, HostId)>, String> {
        let Some(spec) = self.ctx.landscape.secure_links.get(link) else {
            return Ok(Vec::new());
        };
        let moved = moved_vms(plan);
        let mut added = Vec::new();
        for vm in spec.between.iter().filter(|v| moved.contains_key(*v)) {
            let Some(desired) = self.ctx.landscape.vms.get(vm.as_str()) else {
                continue;
            };
            let domain = &moved[vm];
            for host in ends {
                let d = &self.ctx.drivers;
                let state = d
                    .hypervisor
                    .domain(host, domain)
                    .await
                    .map_err(|e| e.to_string())?;
                let active = state
                    .is_some_and(|s| matches!(s.state, DomainState::Running | DomainState::Paused));
                if !active {
                    continue;
                }
                let rules = d
                    .network
                    .block_rules(host)
                    .await
                    .map_err(|e| e.to_string())?;
                if rules.iter().any(|r| r.vm == *vm) {
                    continue;
                }
                let peers = spec
                    .between
                    .iter()
                    .filter(|p| *p != vm)
                    .filter_map(|p| self.ctx.landscape.vms.get(p.as_str()).map(|v| v.address))
                    .collect();
                let rule = crate::model::BlockRule {
                    vm: vm.to_string(),
                    address: desired.address,
                    peers,
                    allow_ipsec: false,
                };
                d.network
                    .block(host, &rule)
                    .await
                    .map_err(|e| e.to_string())?;
                shared
                    .record(
                        Record::GuardBlocked {
                            vm: vm.to_string(),
                            host: host.to_string(),
                        },
                        None,
                    )
                    .map_err(|e| e.to_string())?;
                added.push((vm.to_string(), host.clone()));
            }
        }
        Ok(added)
    }

    /// Removes block rules rollback added on hosts where the VM's domain no longer is.
    async fn sweep(
        &self,
        plan: &Plan,
        shared: &Arc<Shared>,
        added: Vec<(String, HostId)>,
    ) -> Result<(), StateError> {
        let domains = vm_domains(plan);
        let mut seen = HashSet::new();
        for (vm, host) in added {
            if !seen.insert((vm.clone(), host.clone())) {
                continue;
            }
            let domain = domains
                .get(vm.as_str())
                .map_or_else(|| vm.clone(), |d| d.to_string());
            let d = &self.ctx.drivers;
            let here = match d.hypervisor.domain(&host, &domain).await {
                Ok(x) => x.is_some(),
                Err(_) => true, // unknown: keep the rule (fail closed)
            };
            if here {
                continue;
            }
            let present = d
                .network
                .block_rules(&host)
                .await
                .map(|r| r.iter().any(|r| r.vm == vm))
                .unwrap_or(false);
            if present && d.network.unblock(&host, &vm, false).await.is_ok() {
                shared.record(
                    Record::SweepDone {
                        vm: vm.clone(),
                        host: host.to_string(),
                    },
                    None,
                )?;
            }
        }
        Ok(())
    }
}

async fn next_interrupt(rx: &mut Option<watch::Receiver<u8>>) -> u8 {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            *r.borrow_and_update()
        }
        None => std::future::pending().await,
    }
}

/// The reads of a step's check before it runs: its effect, its preconditions and what its
/// action works from.
fn check_queries(step: &Step, locator: &Locator, out: &mut BTreeSet<Query>) {
    for f in step.effect.iter().chain(&step.precondition) {
        fact_queries(f, locator, out);
    }
    action_queries(&step.action, out);
}

/// The reads that decide [`effect_holds`].
fn effect_queries(step: &Step, locator: &Locator) -> BTreeSet<Query> {
    let mut q = BTreeSet::new();
    if step.effect.is_empty() {
        action_queries(&step.action, &mut q);
    }
    for f in &step.effect {
        fact_queries(f, locator, &mut q);
    }
    q
}

fn effect_holds(step: &Step, o: &crate::model::Observed) -> bool {
    if step.effect.is_empty() {
        action_holds(&step.action, o)
    } else {
        step.effect.iter().all(|f| f.holds(o))
    }
}

/// VMs the plan migrates, with their domain names.
fn moved_vms(plan: &Plan) -> HashMap<Name, Name> {
    plan.graph
        .node_weights()
        .filter_map(|s| match &s.action {
            Action::Migrate { vm, domain, .. } => Some((vm.clone(), domain.clone())),
            _ => None,
        })
        .collect()
}

/// Domain name of every VM an action names with its domain.
fn vm_domains(plan: &Plan) -> HashMap<Name, Name> {
    let mut m = HashMap::new();
    for s in plan.graph.node_weights() {
        let actions = std::iter::once(&s.action).chain(s.inverse.as_action());
        for a in actions {
            match a {
                Action::Migrate { vm, domain, .. }
                | Action::Shutdown { vm, domain, .. }
                | Action::Start { vm, domain, .. }
                | Action::Pause { vm, domain, .. }
                | Action::Resume { vm, domain, .. } => {
                    m.insert(vm.clone(), domain.clone());
                }
                _ => {}
            }
        }
    }
    m
}

/// Steps to consider undoing, newest first, with whether they were journaled as completed.
/// A step counts when it was started (it may have acted) and not yet undone; a step only ever
/// skipped was not done by this apply.
pub fn undo_candidates(entries: &[JournalEntry]) -> Vec<(usize, bool)> {
    let mut pending: HashMap<usize, u64> = HashMap::new();
    let mut acted: HashMap<usize, (u64, bool)> = HashMap::new();
    let mut undone: HashSet<usize> = HashSet::new();
    let mark = |acted: &mut HashMap<usize, (u64, bool)>, step: usize, seq: u64, done: bool| {
        let e = acted.entry(step).or_insert((seq, done));
        e.0 = e.0.max(seq);
        e.1 |= done;
    };
    for e in entries {
        match &e.record {
            Record::StepStarted { step, .. } => {
                if let Some(old) = pending.insert(*step, e.seq) {
                    mark(&mut acted, *step, old, false);
                }
            }
            Record::StepDone { step, .. } => {
                pending.remove(step);
                mark(&mut acted, *step, e.seq, true);
            }
            Record::StepFailed { step, .. } => {
                if let Some(s) = pending.remove(step) {
                    mark(&mut acted, *step, s.max(e.seq), false);
                }
            }
            Record::StepSkipped { step, .. } => {
                // Skipped after an interrupted attempt: that attempt made the effect.
                if let Some(s) = pending.remove(step) {
                    mark(&mut acted, *step, s, true);
                }
            }
            Record::UndoDone { step, .. } | Record::UndoSkipped { step, .. } => {
                undone.insert(*step);
            }
            _ => {}
        }
    }
    for (step, seq) in pending {
        mark(&mut acted, step, seq, false);
    }
    let mut v: Vec<(usize, u64, bool)> = acted
        .into_iter()
        .filter(|(s, _)| !undone.contains(s))
        .map(|(s, (seq, done))| (s, seq, done))
        .collect();
    v.sort_by_key(|&(_, seq, _)| Reverse(seq));
    v.into_iter().map(|(s, _, d)| (s, d)).collect()
}

/// Steps journaled as done (resume accepts them after checking the landscape).
pub fn done_steps(entries: &[JournalEntry]) -> HashSet<usize> {
    let mut done = HashSet::new();
    for e in entries {
        match &e.record {
            Record::StepDone { step, .. } => {
                done.insert(*step);
            }
            Record::UndoDone { step, .. } => {
                done.remove(step);
            }
            _ => {}
        }
    }
    done
}

/// What the forward walk's steps check the landscape with.
struct Checks {
    locator: Locator,
    readings: Readings,
}

async fn run_step(
    shared: Arc<Shared>,
    ctx: ExecContext,
    checks: Arc<Checks>,
    i: usize,
    step: Step,
    accept_done: Option<bool>,
    abort: AbortSignal,
) -> (usize, StepResult) {
    let key = step.key.clone();
    let started = Instant::now();
    let fail = |error: String| {
        let r = shared.record(
            Record::StepFailed {
                step: i,
                key: key.clone(),
                error: error.clone(),
            },
            Some(Event::StepFailed {
                step: i,
                key: key.clone(),
                error: error.clone(),
            }),
        );
        shared.time(i, StepStatus::Failed, started);
        match r {
            Ok(()) => (i, StepResult::Failed(error)),
            Err(e) => (i, StepResult::Journal(e)),
        }
    };
    let skipped = |reason: &str| {
        let r = shared.record(
            Record::StepSkipped {
                step: i,
                key: key.clone(),
                reason: reason.to_string(),
            },
            Some(Event::StepSkipped {
                step: i,
                key: key.clone(),
                reason: reason.to_string(),
            }),
        );
        shared.time(i, StepStatus::Skipped, started);
        match r {
            Ok(()) => (i, StepResult::Succeeded),
            Err(e) => (i, StepResult::Journal(e)),
        }
    };
    let mut q: BTreeSet<Query> = BTreeSet::new();
    check_queries(&step, &checks.locator, &mut q);
    let o = match checks.readings.observe(&ctx.drivers, &q).await {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot check the landscape: {e}")),
    };
    if effect_holds(&step, &o) {
        return skipped("already satisfied");
    }
    if accept_done == Some(true) {
        return skipped("done before the interruption; a later step changed its effect");
    }
    if let Some(f) = step.precondition.iter().find(|f| !f.holds(&o)) {
        return fail(format!("precondition does not hold: {}", describe_fact(f)));
    }
    if let Err(e) = shared.record(
        Record::StepStarted {
            step: i,
            key: key.clone(),
        },
        Some(Event::StepStarted {
            step: i,
            key: key.clone(),
            kind: step.kind.to_string(),
            target: step.target.to_string(),
        }),
    ) {
        return (i, StepResult::Journal(e));
    }
    let events = shared.events.clone();
    let pkey = key.clone();
    let progress: ProgressSink = Arc::new(move |p: MigrationProgress| {
        events(&Event::StepProgress {
            step: i,
            key: pkey.clone(),
            percent: p.percent(),
            bytes_processed: p.data_processed,
            bytes_total: p.data_total,
        })
    });
    let acting = checks.readings.acting(probe::Influence::of(&step.action));
    let action_started = Instant::now();
    let performed = perform(&ctx, &step.action, Some(&o), progress, abort).await;
    let action_ms = action_started.elapsed().as_millis() as u64;
    drop(acting);
    if let Err(e) = performed {
        return fail(e.to_string());
    }
    // Only what decides the effect: the preconditions were for starting.
    let q = effect_queries(&step, &checks.locator);
    match checks.readings.observe(&ctx.drivers, &q).await {
        Ok(o) if effect_holds(&step, &o) => {}
        Ok(o) => {
            let missing = step
                .effect
                .iter()
                .find(|f| !f.holds(&o))
                .map_or_else(|| "its action's effect".to_string(), describe_fact);
            return fail(format!(
                "the step reported success but its effect does not hold: {missing}"
            ));
        }
        Err(e) => return fail(format!("cannot verify the step: {e}")),
    }
    let ms = started.elapsed().as_millis() as u64;
    let r = shared.record(
        Record::StepDone {
            step: i,
            key: key.clone(),
            duration_ms: ms,
        },
        Some(Event::StepDone {
            step: i,
            key: key.clone(),
            duration_ms: ms,
            action_ms,
        }),
    );
    shared.time(i, StepStatus::Done, started);
    match r {
        Ok(()) => (i, StepResult::Succeeded),
        Err(e) => (i, StepResult::Journal(e)),
    }
}

/// A fact in one line (its JSON form).
pub fn describe_fact(f: &crate::plan::Fact) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| format!("{f:?}"))
}
