//! The `smig` binary end to end: exit codes, what goes to stdout and stderr.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;

fn smig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smig"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run smig")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn saved_plan(dir: &Path) -> String {
    let path = dir.join("plan.json");
    smig::planfile::write(&path, &reference_doc()).unwrap();
    path.display().to_string()
}

#[test]
fn show_renders_a_saved_plan_without_colour_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let plan = saved_plan(dir.path());
    let o = smig(&["show", &plan]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Plan: 1 link to add, 1 VM to move, 7 steps."),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "colour on a pipe: {out:?}");
}

#[test]
fn show_json_prints_the_document_back() {
    let dir = tempfile::tempdir().unwrap();
    let plan = saved_plan(dir.path());
    let o = smig(&["show", "--json", &plan]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc = smig::planfile::PlanFile::parse(&stdout(&o), "stdout").unwrap();
    assert_eq!(doc, reference_doc());
}

#[test]
fn show_runbook_is_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let plan = saved_plan(dir.path());
    let o = smig(&["show", "--runbook", &plan]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("# Runbook"));
    let o = smig(&["show", "--runbook", "--json", &plan]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn show_refuses_a_damaged_plan_with_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.json");
    let text = reference_doc().to_json();
    std::fs::write(&path, &text[..text.len() / 3]).unwrap();
    let o = smig(&["show", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains("smig::planfile::truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn graph_from_a_saved_plan() {
    let dir = tempfile::tempdir().unwrap();
    let plan = saved_plan(dir.path());
    let o = smig(&["graph", "--plan", &plan]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("digraph smig_plan {"));
    let o = smig(&["graph", "--plan", &plan, "--format", "mermaid"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("flowchart TD"));
    let o = smig(&["graph", "--plan", &plan, "--format", "svg"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn graph_needs_a_plan_or_a_snapshot() {
    let o = smig(&["graph"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--observed"), "{}", stderr(&o));
    let o = smig(&["graph", "--plan", "p.json", "--observed", "o.json"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef smig"),
        ("fish", "complete -c smig"),
    ] {
        let o = smig(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(marker), "{shell}: {out}");
        for sub in ["validate", "plan", "show", "graph", "fmt"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    assert_eq!(smig(&["completions", "tcsh"]).status.code(), Some(1));
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    assert_eq!(smig(&["--help"]).status.code(), Some(0));
    assert_eq!(smig(&["--version"]).status.code(), Some(0));
    assert_eq!(smig(&[]).status.code(), Some(1));
    assert_eq!(smig(&["frobnicate"]).status.code(), Some(1));
    assert_eq!(smig(&["plan", "--no-such-flag"]).status.code(), Some(1));
}

fn reference_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plans/cli-reference-move")
}

/// smig in the reference case directory, with an empty environment plus `env`.
fn smig_in_reference(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smig"))
        .current_dir(reference_dir())
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run smig")
}

const PSK: (&str, &str) = ("SMIG_VAR_web_db_psk", "canary-psk-91c4");

#[test]
fn validate_accepts_the_reference_landscape() {
    let o = smig_in_reference(&["validate"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Success! The configuration is valid.\n");
}

#[test]
fn validate_reports_errors_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.smig.hcl"),
        "vm \"x\" {\n  host = environment.nowhere.host.h\n}\nsubnet {\n",
    )
    .unwrap();
    let o = smig(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("main.smig.hcl"), "{err}");
    assert!(err.contains("smig::config::"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour on a pipe: {err:?}");
}

#[test]
fn validate_needs_configuration_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = smig(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no *.smig.hcl files"), "{}", stderr(&o));
}

#[test]
fn plan_shows_the_reference_move_and_never_the_key() {
    let o = smig_in_reference(&["plan", "--observed", "observed.json"], &[PSK]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("vm.db will move"), "{out}");
    assert!(out.contains("dc.hv2 → cloud.c1"), "{out}");
    assert!(out.contains("Plan: "), "{out}");
    assert!(!out.contains("canary"), "{out}");
    assert!(!stderr(&o).contains("canary"));
}

#[test]
fn plan_detailed_exitcode_is_2_with_changes() {
    let o = smig_in_reference(
        &["plan", "--observed", "observed.json", "--detailed-exitcode"],
        &[PSK],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn plan_without_the_psk_value_is_an_error() {
    let o = smig_in_reference(&["plan", "--observed", "observed.json"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("web_db_psk"), "{}", stderr(&o));
}

#[test]
fn plan_takes_the_key_from_var_and_var_file_too() {
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--var",
            "web_db_psk=canary-1",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--var-file",
            "vars.hcl",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = smig_in_reference(
        &["plan", "--observed", "observed.json", "--var", "oops"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NAME=VALUE"), "{}", stderr(&o));
}

#[test]
fn plan_json_out_and_show_agree() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("db.plan");
    let saved = saved.to_str().unwrap();
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--json",
            "--out",
            saved,
        ],
        &[PSK],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let printed = smig::planfile::PlanFile::parse(&stdout(&o), "stdout").unwrap();
    let read = smig::planfile::read(Path::new(saved)).unwrap();
    assert_eq!(printed, read);
    assert!(stderr(&o).contains("Saved the plan"));
    let o = smig_in_reference(&["show", "--json", saved], &[]);
    assert_eq!(
        smig::planfile::PlanFile::parse(&stdout(&o), "show").unwrap(),
        read
    );
    // The same configuration and snapshot give the same fingerprints.
    let again = smig_in_reference(&["plan", "--observed", "observed.json", "--json"], &[PSK]);
    let again = smig::planfile::PlanFile::parse(&stdout(&again), "again").unwrap();
    assert_eq!(again.fingerprints, read.fingerprints);
    // Another key value is another configuration.
    let other = smig_in_reference(
        &["plan", "--observed", "observed.json", "--json"],
        &[("SMIG_VAR_web_db_psk", "canary-other")],
    );
    let other = smig::planfile::PlanFile::parse(&stdout(&other), "other").unwrap();
    assert_ne!(other.fingerprints.config, read.fingerprints.config);
    assert_eq!(other.fingerprints.observed, read.fingerprints.observed);
}

#[test]
fn plan_runbook_is_markdown() {
    let o = smig_in_reference(
        &["plan", "--observed", "observed.json", "--runbook"],
        &[PSK],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("# Runbook"));
}

#[test]
fn plan_with_a_bad_snapshot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("observed.json");
    std::fs::write(
        &bad,
        "{\"version\": 1, \"hosts\": {\"dc.hv1\": {\"domans\": {}}}}",
    )
    .unwrap();
    let o = smig_in_reference(&["plan", "--observed", bad.to_str().unwrap()], &[PSK]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("domans"), "{}", stderr(&o));
    let o = smig_in_reference(&["plan"], &[PSK]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--observed"), "{}", stderr(&o));
}

#[test]
fn graph_from_the_configuration() {
    let o = smig_in_reference(&["graph", "--observed", "observed.json"], &[PSK]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("migrate vm.db @dc.hv2"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn fmt_check_accepts_the_formatted_examples() {
    let o = smig_in_reference(&["fmt", "--check", "."], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[test]
fn fmt_then_check_finds_nothing_left() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.smig.hcl");
    std::fs::write(
        &file,
        "vm \"web\" {\r\nhost = environment.dc.host.hv1\r\n      subnet=subnet.app\r\n}\r\n",
    )
    .unwrap();
    let o = smig(&["fmt", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = smig(&["fmt", "--check", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).is_empty());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "temporary file left behind");
}

#[test]
fn fmt_reports_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.smig.hcl"), "vm \"x\" {\n").unwrap();
    let o = smig(&["fmt", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a.smig.hcl"), "{}", stderr(&o));
}

/// Runs smig under a pseudo-terminal (util-linux `script`), as a user at a terminal would.
fn smig_on_a_terminal(args: &str, env: &[(&str, &str)]) -> String {
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_smig"));
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .envs(env.iter().copied())
        .output()
        .expect("util-linux `script` runs commands on a pseudo-terminal");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let plan = saved_plan(dir.path());
    let coloured = smig_on_a_terminal(&format!("show {plan}"), &[]);
    assert!(coloured.contains("\u{1b}["), "{coloured:?}");
    assert!(coloured.contains("Plan: 1 link to add"), "{coloured:?}");
    let plain = smig_on_a_terminal(&format!("show {plan}"), &[("NO_COLOR", "1")]);
    assert!(plain.contains("Plan: 1 link to add"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    let plain = smig_on_a_terminal(&format!("show --no-color {plan}"), &[]);
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    // Diagnostics follow the same rule.
    let missing = dir.path().join("missing.json");
    let err = smig_on_a_terminal(&format!("show {}", missing.display()), &[]);
    assert!(err.contains("\u{1b}["), "{err:?}");
    let err = smig_on_a_terminal(&format!("show {}", missing.display()), &[("NO_COLOR", "1")]);
    assert!(err.contains("smig::planfile::io"), "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn plan_with_targeting_says_so() {
    let o = smig_in_reference(
        &["plan", "--observed", "observed.json", "--target", "vm.nope"],
        &[PSK],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("smig::plan::unknown_target"),
        "{}",
        stderr(&o)
    );
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--exclude",
            "vm.db",
            "--detailed-exitcode",
        ],
        &[PSK],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("No changes."), "{out}");
    assert!(
        out.contains("resource targeting is in effect: this plan covers without vm.db"),
        "{out}"
    );
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--target",
            "secure_link.web_db",
            "--json",
        ],
        &[PSK],
    );
    let doc = smig::planfile::PlanFile::parse(&stdout(&o), "stdout").unwrap();
    assert_eq!(
        doc.targeting.targets,
        vec!["secure_link.web_db".to_string()]
    );
    assert!(doc.summary.has_changes());
}

#[test]
fn a_missing_var_file_is_an_error() {
    let o = smig_in_reference(
        &[
            "plan",
            "--observed",
            "observed.json",
            "--var-file",
            "nope.hcl",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read nope.hcl"),
        "{}",
        stderr(&o)
    );
}
