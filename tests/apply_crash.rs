//! A real crash: a child process runs an apply on the file-backed test double, which aborts
//! the process after the k-th step. The parent then finds a stale lock and an unfinished
//! journal, and `resume` reaches the desired landscape or `rollback` the original one.
//!
//! Runs without the test harness: the same binary is parent and (with `SMIG_CRASH_CHILD`) child.

mod apply_support;

use apply_support::*;
use smig::apply::events::{self, Event};
use smig::apply::{session, ApplyMeta, OnFailure};
use smig::drivers::double::LandscapeDouble;
use smig::state::journal::Outcome;
use smig::state::local::LocalState;
use smig::state::StateBackend;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;

const CHILD_ENV: &str = "SMIG_CRASH_CHILD";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn child(dir: &Path) {
    let double = Arc::new(LandscapeDouble::load(&dir.join("landscape.json")).unwrap());
    let state = LocalState::new(dir.join(".smig"));
    let (mut engine, _) = engine(&double, OnFailure::Rollback, 2);
    let d = double.clone();
    engine.events = events::tee(vec![
        events::plain_lines(std::io::stderr()),
        Arc::new(move |e: &Event| {
            if matches!(e, Event::StepDone { .. } | Event::StepSkipped { .. }) {
                d.step_finished();
            }
        }),
    ]);
    let meta = ApplyMeta {
        apply_id: "crash".into(),
        config_fingerprint: Some("config-1".into()),
        observed_fingerprint: None,
    };
    let run = runtime().block_on(session::apply(
        &state,
        &engine,
        &reference_plan(None),
        &meta,
    ));
    // Reaching this point means the double did not abort: the parent reports it.
    println!("child finished: {:?}", run.map(|r| r.report.outcome));
}

fn parent(k: u64, resume: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("landscape.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&observed_before()).unwrap(),
    )
    .unwrap();
    let sidecar = dir.path().join("landscape.json.double.json");
    std::fs::write(&sidecar, format!("{{\"abort_after_steps\": {k}}}")).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() || status.signal() != Some(6) {
        return Err(format!("child was expected to abort, ended with {status}"));
    }
    std::fs::remove_file(&sidecar).unwrap();

    let state = LocalState::new(dir.path().join(".smig"));
    let double = Arc::new(LandscapeDouble::load(&file).map_err(|e| e.to_string())?);
    let (engine, _) = engine(&double, OnFailure::Rollback, 2);
    let rt = runtime();
    // The dead child's lock is left behind, known to be stale: the resume or rollback that
    // continues its apply takes it over (a wrong id still cannot remove it).
    let lock = state.current_lock().unwrap().ok_or("no lock left")?;
    if !lock.is_stale() {
        return Err(format!("the dead child's lock is not stale: {lock:?}"));
    }
    if state.unlock("wrong-id").is_ok() {
        return Err("unlock accepted a wrong id".into());
    }

    let o = double.observed();
    for vm in ["web", "db", "batch"] {
        if o.placements(vm).count() != 1 {
            return Err(format!("after the crash {vm} is not on exactly one host"));
        }
    }
    if resume {
        let run = rt
            .block_on(session::resume(&state, &engine, Some("config-1")))
            .map_err(|e| e.to_string())?;
        if run.report.outcome != Outcome::Succeeded {
            return Err(format!("resume: {}", run.report));
        }
        let want = restorable(&rt.block_on(desired_after()));
        // The file holds what the drivers did, as a real landscape would.
        let on_disk = LandscapeDouble::load(&file).unwrap().observed();
        if restorable(&on_disk) != want {
            return Err(format!(
                "resume did not reach the desired landscape: {on_disk:#?}"
            ));
        }
    } else {
        let run = rt
            .block_on(session::rollback(&state, &engine))
            .map_err(|e| e.to_string())?;
        if run.report.outcome != Outcome::RolledBack {
            return Err(format!("rollback: {}", run.report));
        }
        let on_disk = LandscapeDouble::load(&file).unwrap().observed();
        assert_clean(&on_disk, &["web", "db", "batch"]);
        if restorable(&on_disk) != restorable(&observed_before()) {
            return Err(format!(
                "rollback did not restore the landscape: {on_disk:#?}"
            ));
        }
    }
    if let Some(l) = state.current_lock().map_err(|e| e.to_string())? {
        return Err(format!(
            "a lock is left after the resume or rollback: {l:?}"
        ));
    }
    Ok(())
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let steps = reference_plan(None).graph.node_count() as u64;
    let (mut passed, mut failed) = (0, 0);
    for k in [1, 3, 6, 9, steps - 1] {
        for resume in [true, false] {
            let name = format!(
                "crash after step {k}, then {}",
                if resume { "resume" } else { "rollback" }
            );
            match parent(k, resume) {
                Ok(()) => {
                    passed += 1;
                    println!("test {name} ... ok");
                }
                Err(e) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {e}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
