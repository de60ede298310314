//! The walker on the landscape test double: success, a fault at every mutating call,
//! halt, points of no return, interrupts and route timeouts.

mod apply_support;

use apply_support::*;
use smig::apply::events::Event;
use smig::apply::{ApplyMeta, Engine, OnFailure, Run};
use smig::drivers::double::{Convergence, DoubleConfig, Fault, FaultWhen, LandscapeDouble};
use smig::model::DomainState;
use smig::plan::{Inverse, Plan};
use smig::state::journal::{MemoryJournal, Outcome, Record};
use std::sync::Arc;

fn meta() -> ApplyMeta {
    ApplyMeta {
        apply_id: "test".into(),
        ..Default::default()
    }
}

/// Applies `plan` with an in-memory journal; the run must not error out.
async fn run_in_memory(engine: &Engine, plan: &Plan) -> Run {
    engine
        .apply(plan, Box::new(MemoryJournal::new()), &meta())
        .await
        .unwrap()
}

/// A fault raised before the `nth` call (every call when `None`) of a driver operation.
fn fault_before(call: &str, nth: Option<u64>, message: &str) -> Fault {
    Fault {
        call: call.into(),
        nth,
        target: None,
        when: FaultWhen::Before,
        message: Some(message.into()),
    }
}

#[tokio::test]
async fn reference_plan_reaches_the_desired_landscape() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    // The tunnel takes long: the batch chain is the critical path.
    double.set_config(DoubleConfig {
        delays: vec![smig::drivers::double::Delay {
            call: "network.tunnel_add".into(),
            ms: 40,
        }],
        ..Default::default()
    });
    let (engine, events) = engine(&double, OnFailure::Rollback, 4);
    let plan = reference_plan(None);
    let run = engine
        .apply(&plan, Box::new(MemoryJournal::new()), &meta())
        .await
        .unwrap();
    assert_eq!(run.report.outcome, Outcome::Succeeded, "{}", run.report);
    let o = double.observed();
    let mut without_sa = o.clone();
    for (id, host) in without_sa.hosts.iter_mut() {
        // The SA stays: it carries web <-> db now.
        if id == &h("cloud.c1") || id == &h("dc.hv1") {
            assert_eq!(host.ipsec.len(), 1);
            assert!(host.ipsec[0].sa_up);
            host.ipsec.clear();
        }
    }
    assert_clean(&without_sa, &["web", "db", "batch"]);
    let c1 = &o.hosts[&h("cloud.c1")];
    assert_eq!(c1.domains["db"].state, DomainState::Running);
    assert_eq!(c1.domains["batch"].state, DomainState::Running);
    assert!(o.hosts[&h("dc.hv2")].domains.is_empty());
    // The unsecured connection was reset, the TLS one kept.
    assert_eq!(o.connections["db"].len(), 1);
    assert_eq!(o.connections["db"][0].remote.port(), 443);
    // The journal has a done (or, for route.check, satisfied) line for every step, in dependency order.
    let done: Vec<usize> = run
        .journal
        .entries()
        .iter()
        .filter_map(|e| match e.record {
            Record::StepDone { step, .. } | Record::StepSkipped { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), plan.graph.node_count());
    for edge in plan.graph.raw_edges() {
        let pos = |i: usize| done.iter().position(|&d| d == i).unwrap();
        assert!(pos(edge.source().index()) < pos(edge.target().index()));
    }
    // Report: blackout for both migrations, a critical path through the batch chain.
    assert_eq!(run.report.blackouts.len(), 2);
    assert!(run.report.blackouts.iter().all(|b| b.duration_ms.is_some()));
    assert!(run.report.critical_path_ms >= 40);
    assert!(run
        .report
        .critical_path
        .iter()
        .any(|k| k.starts_with("tunnel.add:subnet.bsub")));
    let text = run.report.to_string();
    assert!(text.contains("Blackout of db"), "{text}");
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::StepProgress { percent: 100, .. })));
}

#[tokio::test]
async fn a_fault_at_every_mutating_call_rolls_back_to_the_landscape_before() {
    let before = observed_before();
    let probe = Arc::new(LandscapeDouble::new(before.clone()));
    let (engine0, _) = engine(&probe, OnFailure::Rollback, 4);
    engine0
        .apply(
            &reference_plan(None),
            Box::new(MemoryJournal::new()),
            &meta(),
        )
        .await
        .unwrap();
    let mutations = probe.mutating_calls().len() as u64;
    assert!(mutations >= 15, "{mutations}");
    for when in [FaultWhen::Before, FaultWhen::After] {
        for k in 1..=mutations {
            let double = Arc::new(LandscapeDouble::new(before.clone()));
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
            let (engine, _) = engine(&double, OnFailure::Rollback, 4);
            let run = run_in_memory(&engine, &reference_plan(None)).await;
            let o = double.observed();
            assert_eq!(
                run.report.outcome,
                Outcome::RolledBack,
                "fault {when:?} at mutating call {k}: {}",
                run.report
            );
            assert_clean(&o, &["web", "db", "batch"]);
            assert_eq!(
                restorable(&o),
                restorable(&before),
                "fault {when:?} at mutating call {k} ({:?})",
                double.mutating_calls().get(k as usize - 1).map(|c| &c.op)
            );
        }
    }
}

#[tokio::test]
async fn halt_leaves_the_vm_blocked() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    double.set_config(DoubleConfig {
        faults: vec![fault_before("ipsec.initiate", None, "IKE timed out")],
        ..Default::default()
    });
    let (engine, events) = engine(&double, OnFailure::Halt, 4);
    let run = run_in_memory(&engine, &reference_plan(None)).await;
    assert_eq!(run.report.outcome, Outcome::Halted);
    assert!(run
        .report
        .error
        .as_deref()
        .unwrap()
        .contains("IKE timed out"));
    let o = double.observed();
    let c1 = &o.hosts[&h("cloud.c1")];
    assert!(c1.domains.contains_key("db"));
    assert!(
        c1.block_rules.iter().any(|r| r.vm == "db"),
        "db must stay blocked"
    );
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::RollbackStarted { .. })));
}

#[tokio::test]
async fn rollback_stops_at_a_completed_point_of_no_return() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    double.set_config(DoubleConfig {
        faults: vec![Fault {
            call: "ipsec.initiate".into(),
            nth: None,
            target: None,
            when: FaultWhen::After,
            message: None,
        }],
        ..Default::default()
    });
    let pnr = Inverse::PointOfNoReturn {
        reason: "post-copy switchover".into(),
    };
    let (engine, _) = engine(&double, OnFailure::Rollback, 1);
    let run = run_in_memory(&engine, &reference_plan(Some(pnr))).await;
    assert_eq!(run.report.outcome, Outcome::Halted, "{}", run.report);
    let stopped = run.report.rollback.as_ref().unwrap().stopped_at.clone();
    assert!(stopped.unwrap().starts_with("migrate:vm.db"));
    let o = double.observed();
    // db stays on the target, blocked (fail closed), without IPsec.
    let c1 = &o.hosts[&h("cloud.c1")];
    assert!(c1.domains.contains_key("db"));
    assert!(c1.block_rules.iter().any(|r| r.vm == "db"));
    assert!(o.hosts.values().all(|h| h.ipsec.is_empty()));
    assert_eq!(o.placements("db").count(), 1);
}

#[tokio::test]
async fn route_that_never_converges_times_out_and_rolls_back() {
    let before = observed_before();
    let double = Arc::new(LandscapeDouble::new(before.clone()));
    double.set_config(DoubleConfig {
        routes: vec![Convergence {
            core: "dc".into(),
            prefix: "192.168.20.0/24".parse().unwrap(),
            after_polls: None,
        }],
        ..Default::default()
    });
    let (engine, _) = engine(&double, OnFailure::Rollback, 4);
    let run = run_in_memory(&engine, &reference_plan(None)).await;
    assert_eq!(run.report.outcome, Outcome::RolledBack);
    assert!(run.report.error.as_deref().unwrap().contains("timed out"));
    let o = double.observed();
    assert_clean(&o, &["web", "db", "batch"]);
    assert_eq!(restorable(&o), restorable(&before));
}

#[tokio::test]
async fn route_converging_after_some_polls_is_waited_for() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    double.set_config(DoubleConfig {
        routes: vec![Convergence {
            core: "dc".into(),
            prefix: "192.168.20.0/24".parse().unwrap(),
            after_polls: Some(4),
        }],
        ..Default::default()
    });
    let (engine, _) = engine(&double, OnFailure::Rollback, 4);
    let run = run_in_memory(&engine, &reference_plan(None)).await;
    assert_eq!(run.report.outcome, Outcome::Succeeded, "{}", run.report);
    let polls = double
        .calls()
        .iter()
        .filter(|c| c.op == "routing.routes")
        .count();
    assert!(polls >= 4, "{polls}");
}

#[tokio::test]
async fn first_interrupt_stops_launching_and_resume_finishes() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    double.set_config(DoubleConfig {
        delays: vec![smig::drivers::double::Delay {
            call: "hypervisor.migrate".into(),
            ms: 50,
        }],
        ..Default::default()
    });
    let (tx, rx) = tokio::sync::watch::channel(0u8);
    let (mut engine, events) = engine(&double, OnFailure::Rollback, 4);
    engine.options.interrupt = Some(rx);
    let plan = reference_plan(None);
    let m = meta();
    let apply = engine.apply(&plan, Box::new(MemoryJournal::new()), &m);
    let interrupt = async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(smig::apply::walker::INTERRUPT_STOP).unwrap();
    };
    let (run, ()) = tokio::join!(apply, interrupt);
    let run = run.unwrap();
    assert_eq!(run.report.outcome, Outcome::Interrupted);
    // The running migrations finished; nothing after them started.
    let o = double.observed();
    assert!(o.hosts[&h("cloud.c1")].domains.contains_key("db"));
    assert!(o.hosts[&h("cloud.c1")].ipsec.is_empty());
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Interrupted { .. })));
    let (engine2, _) = apply_support::engine(&double, OnFailure::Rollback, 4);
    let run = engine2.resume(run.journal).await.unwrap();
    assert_eq!(run.report.outcome, Outcome::Succeeded, "{}", run.report);
    assert_eq!(
        restorable(&double.observed()),
        restorable(&desired_after().await)
    );
}

#[tokio::test]
async fn second_interrupt_aborts_a_running_migration_and_rollback_restores() {
    let before = observed_before();
    let double = Arc::new(LandscapeDouble::new(before.clone()));
    double.set_config(DoubleConfig {
        delays: vec![smig::drivers::double::Delay {
            call: "hypervisor.migrate".into(),
            ms: 2_000,
        }],
        ..Default::default()
    });
    let (tx, rx) = tokio::sync::watch::channel(0u8);
    let (mut engine, _) = engine(&double, OnFailure::Rollback, 4);
    engine.options.interrupt = Some(rx);
    let plan = reference_plan(None);
    let m = meta();
    let started = std::time::Instant::now();
    let apply = engine.apply(&plan, Box::new(MemoryJournal::new()), &m);
    let interrupt = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        tx.send(smig::apply::walker::INTERRUPT_STOP).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(smig::apply::walker::INTERRUPT_NOW).unwrap();
    };
    let (run, ()) = tokio::join!(apply, interrupt);
    let run = run.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1_500),
        "did not abort"
    );
    assert_eq!(run.report.outcome, Outcome::Interrupted);
    assert!(run
        .journal
        .entries()
        .iter()
        .any(|e| matches!(e.record, Record::Interrupted { .. })));
    // The migrations were aborted through the driver (journaled), not just dropped.
    assert!(run.journal.entries().iter().any(|e| matches!(
        &e.record,
        Record::StepFailed { key, error, .. } if key.starts_with("migrate:") && error.contains("aborted")
    )));
    // Both VMs are still on their sources.
    let o = double.observed();
    assert!(o.hosts[&h("dc.hv2")].domains.contains_key("db"));
    assert!(o.hosts[&h("dc.hv1")].domains.contains_key("batch"));
    double.set_config(DoubleConfig::default());
    let (engine2, _) = apply_support::engine(&double, OnFailure::Rollback, 4);
    let run = engine2.rollback(run.journal).await.unwrap();
    assert_eq!(run.report.outcome, Outcome::RolledBack, "{}", run.report);
    let o = double.observed();
    assert_clean(&o, &["web", "db", "batch"]);
    assert_eq!(restorable(&o), restorable(&before));
}

#[tokio::test]
async fn a_failed_undo_halts_and_a_later_rollback_finishes_the_job() {
    let before = observed_before();
    let double = Arc::new(LandscapeDouble::new(before.clone()));
    // The forward run fails at enable of db; the first undo of a migration fails too.
    double.set_config(DoubleConfig {
        faults: vec![
            Fault {
                call: "network.reset_connections".into(),
                nth: Some(1),
                target: None,
                when: FaultWhen::Before,
                message: None,
            },
            fault_before("hypervisor.migrate", Some(2), "migration stream broke"),
        ],
        ..Default::default()
    });
    let (engine, _) = engine(&double, OnFailure::Rollback, 1);
    let run = run_in_memory(&engine, &reference_plan(None)).await;
    assert_eq!(run.report.outcome, Outcome::Halted, "{}", run.report);
    let o = double.observed();
    assert_eq!(o.placements("db").count(), 1);
    // The undo stopped at the migration back: db stays on the target, blocked (fail closed),
    // its IPsec already removed.
    let c1 = &o.hosts[&h("cloud.c1")];
    assert!(c1.domains.contains_key("db"));
    assert!(c1.block_rules.iter().any(|r| r.vm == "db"));
    assert!(o.hosts.values().all(|h| h.ipsec.is_empty()));
    double.set_config(DoubleConfig::default());
    let (engine2, _) = apply_support::engine(&double, OnFailure::Rollback, 1);
    let run = engine2.rollback(run.journal).await.unwrap();
    assert_eq!(run.report.outcome, Outcome::RolledBack, "{}", run.report);
    let o = double.observed();
    assert_clean(&o, &["web", "db", "batch"]);
    assert_eq!(restorable(&o), restorable(&before));
}
