//! Apply, resume and rollback through the local state directory: crashes after each step,
//! concurrent applies, stale locks, hostile state files, secrets, and the event schema.

mod apply_support;

use apply_support::*;
use smig::apply::events::{self, Event};
use smig::apply::{session, ApplyError, ApplyMeta, Engine, OnFailure};
use smig::drivers::double::{Delay, DoubleConfig, Fault, FaultWhen, LandscapeDouble};
use smig::state::journal::Outcome;
use smig::state::local::LocalState;
use smig::state::{StateBackend, StateError};
use std::sync::Arc;

fn meta(id: &str) -> ApplyMeta {
    ApplyMeta {
        apply_id: id.into(),
        config_fingerprint: Some("config-1".into()),
        observed_fingerprint: Some("observed-1".into()),
    }
}

fn unlock_leftover(state: &LocalState) {
    let lock = state
        .current_lock()
        .unwrap()
        .expect("a crashed apply leaves its lock");
    state.unlock(&lock.id).unwrap();
}

#[tokio::test]
async fn crash_after_each_step_then_resume_or_rollback() {
    let before = observed_before();
    let desired = restorable(&desired_after().await);
    let plan = reference_plan(None);
    let steps = plan.graph.node_count();
    for k in 1..steps {
        for finish_by_resume in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let state = LocalState::new(dir.path().join(".smig"));
            let double = Arc::new(LandscapeDouble::new(before.clone()));
            let (mut engine, _) = engine(&double, OnFailure::Rollback, 2);
            engine.options.stop_after_steps = Some(k);
            let run = session::apply(&state, &engine, &plan, &meta("crashy"))
                .await
                .unwrap();
            assert_eq!(run.report.outcome, Outcome::Interrupted);

            // The dead apply's lock is still there: the next command names its owner.
            let err = session::apply(&state, &engine, &plan, &meta("next"))
                .await
                .err()
                .unwrap();
            assert!(
                matches!(err, ApplyError::State(StateError::Locked { .. })),
                "{err}"
            );
            unlock_leftover(&state);
            // An unfinished journal: a plain apply refuses and explains.
            let err = session::apply(&state, &engine, &plan, &meta("next"))
                .await
                .err()
                .unwrap();
            assert!(err.to_string().contains("did not finish"), "{err}");

            let (engine, _) = apply_support::engine(&double, OnFailure::Rollback, 2);
            if finish_by_resume {
                let run = session::resume(&state, &engine, Some("config-1"))
                    .await
                    .unwrap();
                assert_eq!(
                    run.report.outcome,
                    Outcome::Succeeded,
                    "k={k}: {}",
                    run.report
                );
                assert_eq!(
                    restorable(&double.observed()),
                    desired,
                    "resume after step {k}"
                );
                let st = state.read_state().unwrap();
                assert_eq!(
                    st.last_applied.unwrap().config_fingerprint.unwrap(),
                    "config-1"
                );
            } else {
                let run = session::rollback(&state, &engine).await.unwrap();
                assert_eq!(
                    run.report.outcome,
                    Outcome::RolledBack,
                    "k={k}: {}",
                    run.report
                );
                let o = double.observed();
                assert_clean(&o, &["web", "db", "batch"]);
                assert_eq!(
                    restorable(&o),
                    restorable(&before),
                    "rollback after step {k}"
                );
                assert!(state.read_state().unwrap().last_applied.is_none());
            }
            assert!(state.read_journal().unwrap().is_none(), "journal archived");
            assert_eq!(state.history().unwrap(), vec!["crashy".to_string()]);
            assert!(state.current_lock().unwrap().is_none());
        }
    }
}

#[tokio::test]
async fn resume_refuses_another_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let state = LocalState::new(dir.path());
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    let (mut engine, _) = engine(&double, OnFailure::Rollback, 2);
    engine.options.stop_after_steps = Some(3);
    session::apply(&state, &engine, &reference_plan(None), &meta("a"))
        .await
        .unwrap();
    unlock_leftover(&state);
    let err = session::resume(&state, &engine, Some("config-2"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApplyError::ConfigChanged { .. }), "{err}");
    let err = session::resume(&LocalState::new(dir.path().join("none")), &engine, None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no unfinished apply"), "{err}");
}

#[tokio::test]
async fn two_applies_at_once_exactly_one_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let state = LocalState::new(dir.path());
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    double.set_config(DoubleConfig {
        delays: vec![Delay {
            call: "hypervisor.migrate".into(),
            ms: 100,
        }],
        ..Default::default()
    });
    let (e1, _) = engine(&double, OnFailure::Rollback, 2);
    let (e2, _) = engine(&double, OnFailure::Rollback, 2);
    let plan = reference_plan(None);
    let (m1, m2) = (meta("one"), meta("two"));
    let (a, b) = tokio::join!(
        session::apply(&state, &e1, &plan, &m1),
        session::apply(&state, &e2, &plan, &m2)
    );
    let (ok, err) = match (a, b) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        (a, b) => panic!(
            "exactly one must proceed: {:?} / {:?}",
            a.map(|r| r.report.outcome),
            b.map(|r| r.report.outcome)
        ),
    };
    assert_eq!(ok.report.outcome, Outcome::Succeeded);
    let msg = err.to_string();
    assert!(
        matches!(err, ApplyError::State(StateError::Locked { .. })),
        "{msg}"
    );
    let who = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or("unknown".into()),
        smig::state::hostname()
    );
    assert!(msg.contains(&who) && msg.contains("lock id"), "{msg}");
}

#[tokio::test]
async fn hostile_state_files_are_clear_errors_and_stay_untouched() {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    let (engine, _) = engine(&double, OnFailure::Rollback, 2);
    let plan = reference_plan(None);
    let cases: [(&str, &str); 5] = [
        (
            "journal.jsonl",
            "{\"seq\":0,\"at\":\"x\",\"type\":\"apply_started\",\"vers",
        ),
        ("journal.jsonl", "garbage\n"),
        (
            "state.json",
            "{\"version\": 1, \"last_applied\": {\"apply_id\": ",
        ),
        ("state.json", "[1, 2, 3]"),
        ("lock.json", "{\"id\": 3}"),
    ];
    for (file, content) in cases {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::new(dir.path());
        std::fs::write(dir.path().join(file), content).unwrap();
        for attempt in 0..3 {
            let err = match attempt {
                0 => session::apply(&state, &engine, &plan, &meta("x"))
                    .await
                    .err(),
                1 => session::resume(&state, &engine, None).await.err(),
                _ => session::rollback(&state, &engine).await.err(),
            }
            .unwrap_or_else(|| panic!("{file} {content:?} must be refused"));
            let msg = err.to_string();
            assert!(
                msg.contains(file) && (msg.contains("malformed") || msg.contains("truncated")),
                "{file}: {msg}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join(file)).unwrap(),
                content
            );
        }
        assert!(double.mutating_calls().is_empty(), "nothing may change");
    }
}

#[tokio::test]
async fn canary_secret_appears_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let state = LocalState::new(dir.path().join(".smig"));
    let snapshot = dir.path().join("landscape.json");
    std::fs::write(
        &snapshot,
        serde_json::to_string(&observed_before()).unwrap(),
    )
    .unwrap();
    let events_path = dir.path().join("events.jsonl");
    let events_file = std::fs::File::create(&events_path).unwrap();
    let mut text = String::new();
    for (i, fault) in [None, Some("enable")].into_iter().enumerate() {
        let double = Arc::new(LandscapeDouble::load(&snapshot).unwrap());
        if fault.is_some() {
            // The second run fails late and rolls back through ipsec removal.
            double.set_config(DoubleConfig {
                faults: vec![Fault {
                    call: "network.unblock".into(),
                    nth: Some(1),
                    target: Some("cloud.c1".into()),
                    when: FaultWhen::Before,
                    message: None,
                }],
                ..Default::default()
            });
            std::fs::write(
                &snapshot,
                serde_json::to_string(&observed_before()).unwrap(),
            )
            .unwrap();
        }
        let (mut engine, _) = engine(&double, OnFailure::Rollback, 2);
        engine.events = events::tee(vec![
            events::json_lines(events_file.try_clone().unwrap()),
            events::plain_lines(std::io::sink()),
        ]);
        let run = session::apply(
            &state,
            &engine,
            &reference_plan(None),
            &meta(&format!("c{i}")),
        )
        .await
        .unwrap();
        text.push_str(&run.report.to_string());
        text.push_str(&format!("{:?}", run.report));
        text.push_str(&serde_json::to_string(&run.report).unwrap());
        text.push_str(&format!("{:?}", double.calls()));
    }
    let mut files = vec![events_path, snapshot.clone()];
    for d in [
        dir.path().to_path_buf(),
        dir.path().join(".smig"),
        dir.path().join(".smig/history"),
    ] {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                files.push(p);
            }
        }
    }
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().ends_with("calls.jsonl")));
    for f in files {
        let content = std::fs::read_to_string(&f).unwrap();
        assert!(
            !content.contains(CANARY),
            "{} holds the secret",
            f.display()
        );
    }
    assert!(!text.contains(CANARY));
    assert!(
        text.contains("ipsec.load"),
        "the key was handed to the IPsec driver"
    );
}

#[tokio::test]
async fn events_follow_the_published_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schemas/events.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut all = Vec::new();
    for fault in [false, true] {
        let double = Arc::new(LandscapeDouble::new(observed_before()));
        if fault {
            double.set_config(DoubleConfig {
                faults: vec![Fault {
                    call: "network.tunnel_remove".into(),
                    nth: Some(1),
                    target: None,
                    when: FaultWhen::Before,
                    message: None,
                }],
                ..Default::default()
            });
        }
        let buf = SharedBuf::default();
        let (mut engine, _) = engine(&double, OnFailure::Rollback, 3);
        engine.events = events::json_lines(buf.clone());
        let run = Engine::apply(
            &engine,
            &reference_plan(None),
            Box::new(smig::state::journal::MemoryJournal::new()),
            &meta("s"),
        )
        .await
        .unwrap();
        assert_eq!(
            run.report.outcome,
            if fault {
                Outcome::RolledBack
            } else {
                Outcome::Succeeded
            }
        );
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
            all.push(v["event"].as_str().unwrap().to_string());
        }
    }
    for kind in [
        "apply_started",
        "step_started",
        "step_progress",
        "step_done",
        "step_failed",
        "rollback_started",
        "undo_started",
        "undo_done",
        "undo_skipped",
        "rollback_done",
        "apply_done",
    ] {
        assert!(all.iter().any(|e| e == kind), "no {kind} event seen");
    }
    // A value that breaks the schema is caught.
    let bad = serde_json::json!({"event": "step_done", "step": 1, "key": "k"});
    assert!(!validator.is_valid(&bad));
    let _ = Event::Interrupted {
        reason: String::new(),
    };
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
