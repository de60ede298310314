//! `smig apply`, `rollback` and `state` as a user runs them, on the landscape test double:
//! a saved plan applied then re-planned to no changes, a second apply that mutates nothing,
//! a stale plan refused, a real crash resumed and rolled back, two applies at once, JSON
//! events against their schema, and the configuration's secret nowhere in any output or file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SECRET: &str = "golden-canary-psk-7f3a";

fn case() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plans/cli-reference-move");
    for f in ["main.smig.hcl", "vars.hcl"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(src.join("observed.json"), dir.path().join("landscape.json")).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("vars.hcl"))
        .unwrap()
        .contains(SECRET));
    dir
}

fn smig(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smig"))
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const APPLY: &[&str] = &["--var-file", "vars.hcl", "--test-double", "landscape.json"];

fn args<'a>(head: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(APPLY).copied().collect()
}

fn mutating_calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("landscape.json.calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"mutating\":true"))
        .count()
}

fn plan_says_no_changes(dir: &Path) -> bool {
    let o = smig(
        dir,
        &[
            "plan",
            "--observed",
            "landscape.json",
            "--var-file",
            "vars.hcl",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    text(&o).contains("No changes")
}

#[test]
fn saved_plan_applies_then_plan_shows_no_changes_and_a_second_apply_changes_nothing() {
    let dir = case();
    let d = dir.path();
    let o = smig(
        d,
        &[
            "plan",
            "--observed",
            "landscape.json",
            "--var-file",
            "vars.hcl",
            "--out",
            "p.json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = smig(d, &args(&["apply", "p.json"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("succeeded") && out.contains("Blackout of db"),
        "{out}"
    );
    assert!(out.contains("Critical path"), "{out}");
    assert!(plan_says_no_changes(d));
    let before = mutating_calls(d);
    assert!(before > 0);
    let o = smig(d, &args(&["apply", "--auto-approve"]), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No changes"), "{}", text(&o));
    assert_eq!(mutating_calls(d), before, "a second apply must not mutate");
    let o = smig(d, &["state", "list"], &[]);
    let out = text(&o);
    assert!(
        out.contains("Lock: none") && out.contains("Last applied: "),
        "{out}"
    );
    // Without --auto-approve and without a terminal, a fresh apply refuses to proceed.
    let o = smig(
        d,
        &[
            "plan",
            "--observed",
            "landscape.json",
            "--var-file",
            "vars.hcl",
        ],
        &[],
    );
    assert!(o.status.success());
}

#[test]
fn stale_saved_plan_is_refused() {
    let dir = case();
    let d = dir.path();
    let o = smig(
        d,
        &[
            "plan",
            "--observed",
            "landscape.json",
            "--var-file",
            "vars.hcl",
            "--out",
            "p.json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The landscape changes under the saved plan: a connection goes away.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("landscape.json")).unwrap()).unwrap();
    v["connections"] = serde_json::json!({});
    std::fs::write(d.join("landscape.json"), v.to_string()).unwrap();
    let o = smig(d, &args(&["apply", "p.json"]), &[]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("stale") && out.contains("discovered landscape"),
        "{out}"
    );
    assert_eq!(mutating_calls(d), 0);
    // And a changed configuration.
    let o = smig(
        d,
        &[
            "plan",
            "--observed",
            "landscape.json",
            "--var-file",
            "vars.hcl",
            "--out",
            "p.json",
        ],
        &[],
    );
    assert!(o.status.success());
    let o = smig(
        d,
        &[
            "apply",
            "p.json",
            "--var",
            "web_db_psk=another",
            "--test-double",
            "landscape.json",
        ],
        &[],
    );
    let out = text(&o);
    assert!(
        !o.status.success() && out.contains("configuration"),
        "{out}"
    );
    assert_eq!(mutating_calls(d), 0);
}

#[test]
fn crash_mid_apply_then_resume_and_rollback() {
    for resume in [true, false] {
        let dir = case();
        let d = dir.path();
        let original = std::fs::read_to_string(d.join("landscape.json")).unwrap();
        let o = smig(
            d,
            &args(&["apply", "--auto-approve"]),
            &[("SMIG_DOUBLE", "{\"abort_after_steps\": 3}")],
        );
        assert!(!o.status.success(), "the apply must die: {}", text(&o));
        let o = smig(d, &["state", "list"], &[]);
        let out = text(&o);
        assert!(
            out.contains("STALE") && out.contains("Unfinished apply"),
            "{out}"
        );
        let o = smig(d, &args(&["apply", "--auto-approve"]), &[]);
        assert!(text(&o).contains("stale"), "{}", text(&o));
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(".smig/lock.json")).unwrap())
                .unwrap();
        let id = lock["id"].as_str().unwrap();
        let o = smig(d, &["state", "unlock", "not-the-id"], &[]);
        assert!(!o.status.success());
        let o = smig(d, &["state", "unlock", id], &[]);
        assert!(o.status.success(), "{}", text(&o));
        let o = smig(d, &args(&["apply", "--auto-approve"]), &[]);
        assert!(text(&o).contains("did not finish"), "{}", text(&o));
        let o = smig(d, &["state", "show"], &[]);
        assert!(text(&o).contains("done      block:vm.db"), "{}", text(&o));
        if resume {
            let o = smig(d, &args(&["apply", "--resume"]), &[]);
            assert!(o.status.success(), "{}", text(&o));
            assert!(plan_says_no_changes(d));
        } else {
            let o = smig(
                d,
                &[
                    "rollback",
                    "--var-file",
                    "vars.hcl",
                    "--test-double",
                    "landscape.json",
                ],
                &[],
            );
            assert!(o.status.success(), "{}", text(&o));
            let parse = |t: &str| smig::discover::snapshot::Snapshot::parse(t, "x").unwrap();
            let now = parse(&std::fs::read_to_string(d.join("landscape.json")).unwrap());
            assert_eq!(
                now.hosts,
                parse(&original).hosts,
                "rollback restores the hosts"
            );
        }
        let o = smig(d, &["state", "list"], &[]);
        assert!(text(&o).contains("Unfinished apply: none"), "{}", text(&o));
    }
}

#[test]
fn two_applies_at_once_one_proceeds_the_other_names_the_owner() {
    let dir = case();
    let d = dir.path();
    let slow = [(
        "SMIG_DOUBLE",
        "{\"delays\": [{\"call\": \"hypervisor.migrate\", \"ms\": 800}]}",
    )];
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_smig"))
            .current_dir(d)
            .env_clear()
            .env("NO_COLOR", "1")
            .envs(slow)
            .args(args(&["apply", "--auto-approve"]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{}\n=====\n{}", text(&a), text(&b));
    let loser = if a.status.success() { &b } else { &a };
    let out = text(loser);
    assert!(
        out.contains("locked by") && out.contains("lock id") && out.contains("pid"),
        "{out}"
    );
}

#[test]
fn json_events_follow_the_schema_and_the_secret_appears_nowhere() {
    let dir = case();
    let d = dir.path();
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schemas/events.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut outputs = String::new();
    // A failing apply (rolled back), then a successful one.
    let fail = [(
        "SMIG_DOUBLE",
        "{\"faults\": [{\"call\": \"ipsec.initiate\", \"message\": \"IKE timed out\"}]}",
    )];
    for env in [&fail[..], &[]] {
        let o = smig(d, &args(&["apply", "--auto-approve", "--json"]), env);
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(o.status.success(), env.is_empty(), "{}", text(&o));
        let mut kinds = Vec::new();
        for line in stdout.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
            if v["event"] == "step_done" {
                assert!(
                    v["action_ms"].as_u64() <= v["duration_ms"].as_u64(),
                    "{line}"
                );
            }
            kinds.push(v["event"].as_str().unwrap().to_string());
        }
        assert_eq!(kinds.first().map(String::as_str), Some("apply_started"));
        assert_eq!(kinds.last().map(String::as_str), Some("apply_done"));
        if !env.is_empty() {
            assert!(kinds.iter().any(|k| k == "rollback_done"), "{kinds:?}");
        }
        outputs.push_str(&text(&o));
    }
    for cmd in [&["state", "list"][..], &["state", "show", "--json"]] {
        outputs.push_str(&text(&smig(d, cmd, &[])));
    }
    assert!(
        !outputs.contains(SECRET),
        "the secret leaked into command output"
    );
    let mut stack = vec![d.to_path_buf()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "vars.hcl" {
                let content = std::fs::read_to_string(&p).unwrap();
                assert!(
                    !content.contains(SECRET),
                    "{} holds the secret",
                    p.display()
                );
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 5,
        "state, journal history, snapshot and call log were checked"
    );
}
