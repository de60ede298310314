//! The apply engine over every golden plan case (`testdata/plans/<case>/`): the case's
//! configuration is loaded, planned against its recorded landscape, and applied on the
//! landscape test double.
//!
//! - success, then planning again on the result shows no changes and a second apply makes
//!   zero mutating calls;
//! - a fault at each mutating call in turn (before and after its effect): rollback restores
//!   the landscape, every VM on exactly one host;
//! - a crash after each step in turn: resume reaches the desired landscape, rollback the
//!   original one.

mod apply_support;

use apply_support::restorable;
use smig::apply::{ApplyMeta, Engine, ExecContext, OnFailure, WalkOptions};
use smig::config::{self, Mode, SourceFile, VarInputs};
use smig::discover::snapshot::Snapshot;
use smig::drivers::double::{DoubleConfig, Fault, FaultWhen, LandscapeDouble};
use smig::drivers::Drivers;
use smig::model::{Landscape, Observed};
use smig::plan::{self, Plan, PlanOptions};
use smig::state::journal::{MemoryJournal, Outcome};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Case {
    name: String,
    landscape: Arc<Landscape>,
    before: Observed,
    plan: Plan,
}

fn load(dir: &Path) -> Case {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".smig.hcl"))
        .collect();
    files.sort();
    let read =
        |p: &Path| SourceFile::new(p.display().to_string(), std::fs::read_to_string(p).unwrap());
    let sources: Vec<SourceFile> = files.iter().map(|p| read(p)).collect();
    let mut vars = VarInputs::default();
    if dir.join("vars.hcl").is_file() {
        vars.files.push(read(&dir.join("vars.hcl")));
    }
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let landscape = config::load(&sources, &vars, Mode::Plan)
        .unwrap_or_else(|e| panic!("{name}: {:?}", miette::Report::new(e)));
    let before = Snapshot::new(dir.join("observed.json")).read().unwrap();
    let plan = plan_for(&landscape, &before, &name);
    Case {
        name,
        landscape: Arc::new(landscape),
        before,
        plan,
    }
}

fn plan_for(landscape: &Landscape, observed: &Observed, name: &str) -> Plan {
    match plan::build(landscape, observed, &PlanOptions::default()) {
        Ok(p) => p,
        Err(e) => panic!("{name}: {:?}", miette::Report::new(e)),
    }
}

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plans");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("observed.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "golden cases missing");
    dirs.iter().map(|d| load(d)).collect()
}

fn engine(case: &Case, double: &Arc<LandscapeDouble>, options: WalkOptions) -> Engine {
    Engine {
        ctx: ExecContext {
            drivers: Drivers::all(double.clone()),
            landscape: case.landscape.clone(),
            poll_interval: Some(Duration::from_millis(2)),
        },
        events: smig::apply::events::discard(),
        options,
        discovered: None,
    }
}

fn opts() -> WalkOptions {
    WalkOptions {
        parallelism: 4,
        on_failure: OnFailure::Rollback,
        ..Default::default()
    }
}

fn meta() -> ApplyMeta {
    ApplyMeta {
        apply_id: "golden".into(),
        ..Default::default()
    }
}

/// Every VM of the configuration is defined on exactly one host.
fn assert_placed(case: &Case, o: &Observed, when: &str) {
    for vm in case.landscape.vms.values() {
        let n = o.placements(&vm.domain).count();
        assert_eq!(n, 1, "{}: {when}: {} is on {n} hosts", case.name, vm.name);
    }
}

async fn apply_ok(case: &Case) -> (Observed, u64) {
    let double = Arc::new(LandscapeDouble::new(case.before.clone()));
    let run = engine(case, &double, opts())
        .apply(&case.plan, Box::new(MemoryJournal::new()), &meta())
        .await
        .unwrap();
    assert_eq!(
        run.report.outcome,
        Outcome::Succeeded,
        "{}: {}",
        case.name,
        run.report
    );
    (double.observed(), double.mutating_calls().len() as u64)
}

#[tokio::test]
async fn apply_then_plan_shows_no_changes_and_a_second_apply_changes_nothing() {
    for case in cases() {
        let double = Arc::new(LandscapeDouble::new(case.before.clone()));
        let run = engine(&case, &double, opts())
            .apply(&case.plan, Box::new(MemoryJournal::new()), &meta())
            .await
            .unwrap();
        assert_eq!(
            run.report.outcome,
            Outcome::Succeeded,
            "{}: {}",
            case.name,
            run.report
        );
        let after = double.observed();
        assert_placed(&case, &after, "after apply");
        for vm in case.landscape.vms.values() {
            assert!(
                after
                    .hosts
                    .get(&vm.host)
                    .is_some_and(|h| h.domains.contains_key(vm.domain.as_str())),
                "{}: {} is not on its desired host {}",
                case.name,
                vm.name,
                vm.host
            );
        }
        let again = plan_for(&case.landscape, &after, &case.name);
        assert_eq!(
            again.graph.node_count(),
            0,
            "{}: planning after apply still has steps: {:?}",
            case.name,
            again
                .graph
                .node_weights()
                .map(|s| &s.key)
                .collect::<Vec<_>>()
        );
        assert!(
            again.changes.is_empty(),
            "{}: {:?}",
            case.name,
            again.changes
        );
        double.clear_calls();
        let run = engine(&case, &double, opts())
            .apply(&again, Box::new(MemoryJournal::new()), &meta())
            .await
            .unwrap();
        assert_eq!(run.report.outcome, Outcome::Succeeded);
        assert!(
            double.mutating_calls().is_empty(),
            "{}: second apply mutated: {:?}",
            case.name,
            double.mutating_calls()
        );
    }
}

#[tokio::test]
async fn a_fault_at_each_mutating_call_rolls_back_to_the_landscape_before() {
    for case in cases() {
        let (_, mutations) = apply_ok(&case).await;
        for when in [FaultWhen::Before, FaultWhen::After] {
            for k in 1..=mutations {
                let double = Arc::new(LandscapeDouble::new(case.before.clone()));
                double.set_config(DoubleConfig {
                    faults: vec![Fault {
                        call: "*".into(),
                        nth: Some(k),
                        target: None,
                        when,
                        message: None,
                    }],
                    ..Default::default()
                });
                let run = engine(&case, &double, opts())
                    .apply(&case.plan, Box::new(MemoryJournal::new()), &meta())
                    .await
                    .unwrap();
                let what = format!(
                    "{}: fault {when:?} at mutating call {k} ({})",
                    case.name,
                    double
                        .mutating_calls()
                        .get(k as usize - 1)
                        .map_or("-".into(), |c| format!("{} on {}", c.op, c.target))
                );
                let o = double.observed();
                assert_placed(&case, &o, &what);
                let pnr = case
                    .plan
                    .graph
                    .node_weights()
                    .any(|s| matches!(s.inverse, smig::plan::Inverse::PointOfNoReturn { .. }));
                if pnr && run.report.outcome == Outcome::Halted {
                    continue; // stopped at a point of no return, fail closed
                }
                assert_eq!(
                    run.report.outcome,
                    Outcome::RolledBack,
                    "{what}: {}",
                    run.report
                );
                assert_eq!(
                    restorable(&o),
                    restorable(&case.before),
                    "{what}: {}",
                    run.report
                );
            }
        }
    }
}

#[tokio::test]
async fn a_crash_after_each_step_then_resume_or_rollback() {
    for case in cases() {
        let (desired, _) = apply_ok(&case).await;
        let steps = case.plan.graph.node_count();
        for k in 1..steps {
            for resume in [true, false] {
                let double = Arc::new(LandscapeDouble::new(case.before.clone()));
                let mut o = opts();
                o.stop_after_steps = Some(k);
                let run = engine(&case, &double, o)
                    .apply(&case.plan, Box::new(MemoryJournal::new()), &meta())
                    .await
                    .unwrap();
                assert_eq!(run.report.outcome, Outcome::Interrupted);
                let what = format!("{}: crash after step {k}", case.name);
                assert_placed(&case, &double.observed(), &what);
                let e = engine(&case, &double, opts());
                if resume {
                    let run = e.resume(run.journal).await.unwrap();
                    assert_eq!(
                        run.report.outcome,
                        Outcome::Succeeded,
                        "{what}: {}",
                        run.report
                    );
                    assert_eq!(
                        restorable(&double.observed()),
                        restorable(&desired),
                        "{what}"
                    );
                } else {
                    let run = e.rollback(run.journal).await.unwrap();
                    let o = double.observed();
                    assert_placed(&case, &o, &what);
                    if run.report.outcome == Outcome::Halted
                        && run
                            .report
                            .rollback
                            .as_ref()
                            .is_some_and(|r| r.stopped_at.is_some())
                        && case.plan.graph.node_weights().any(|s| {
                            matches!(s.inverse, smig::plan::Inverse::PointOfNoReturn { .. })
                        })
                    {
                        continue;
                    }
                    assert_eq!(
                        run.report.outcome,
                        Outcome::RolledBack,
                        "{what}: {}",
                        run.report
                    );
                    assert_eq!(
                        restorable(&o),
                        restorable(&case.before),
                        "{what}: {}",
                        run.report
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_report_shows_a_block_to_enable_blackout_only_where_traffic_was_cut() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plans");
    for (name, switchover_only) in [("01-live-block-first", false), ("02-live-prestaged", true)] {
        let case = load(&dir.join(name));
        let double = Arc::new(LandscapeDouble::new(case.before.clone()));
        let run = engine(&case, &double, opts())
            .apply(&case.plan, Box::new(MemoryJournal::new()), &meta())
            .await
            .unwrap();
        let b = &run.report.blackouts[0];
        assert_eq!(b.switchover_only, switchover_only, "{name}: {b:?}");
        assert_eq!(b.duration_ms.is_some(), !switchover_only, "{name}: {b:?}");
        let text = run.report.to_string();
        assert_eq!(
            text.contains("Blackout of db: libvirt's switchover only"),
            switchover_only,
            "{name}: {text}"
        );
    }
}
