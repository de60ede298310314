//! Golden plans: for every `testdata/plans/<case>/` (its `*.smig.hcl` files and a recorded
//! `observed.json`, optionally `vars.hcl` passed as `--var-file`), run the `smig` binary and
//! snapshot the human plan, the JSON plan, the graph in DOT and Mermaid and the runbook
//! (`tests/snapshots/golden/`).
//!
//! Each run happens inside the case directory with an empty environment (no colour, no
//! `SMIG_VAR_*` from the machine), so snapshots hold no machine-specific path or value. Beyond
//! the snapshots, every case checks: the JSON validates against `schemas/plan.schema.json`;
//! `--detailed-exitcode` agrees with the JSON summary; a plan saved with `--out` shows the same
//! through `smig show`; no secret (a value from `vars.hcl` or a literal `psk`) appears in any
//! output.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> Vec<PathBuf> {
    let dir = root().join("testdata/plans");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// Runs smig in `case` with `args`, plus `--var-file vars.hcl` for commands that load the
/// configuration when the case has one.
fn smig(case: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smig"));
    cmd.current_dir(case)
        .env_clear()
        .env("NO_COLOR", "1")
        .args(args);
    if case.join("vars.hcl").is_file() && matches!(args.first(), Some(&"plan") | Some(&"graph")) {
        cmd.args(["--var-file", "vars.hcl"]);
    }
    cmd.output().expect("run smig")
}

/// The text of a run: stdout, and exit code and stderr when it failed.
fn transcript(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = o.status.code().unwrap_or(-1);
    if code != 0 {
        s.push_str(&format!("\n--- exit code {code}; stderr ---\n"));
        s.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    s.replace(
        &format!("\"smig_version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        "\"smig_version\": \"[version]\"",
    )
    .replace(
        &format!("smig {} from", env!("CARGO_PKG_VERSION")),
        "smig [version] from",
    )
}

/// The secrets a case feeds in: quoted values of `vars.hcl` and of `psk` attributes in its
/// configuration files.
fn secrets(case: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(case).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "vars.hcl" || name.ends_with(".smig.hcl") {
            let all = name == "vars.hcl";
            let text = std::fs::read_to_string(entry.path()).unwrap();
            texts.extend(
                text.lines()
                    .filter(|l| all || l.trim_start().starts_with("psk"))
                    .map(str::to_string),
            );
        }
    }
    texts
        .iter()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim()))
        .filter_map(|v| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .filter(|v| v.len() >= 6)
        .map(str::to_string)
        .collect()
}

fn plan_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schemas/plan.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn golden_plans() {
    let cases = cases();
    assert!(!cases.is_empty(), "no case under testdata/plans/");
    let validator = plan_validator();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            case.join("observed.json").is_file(),
            "{name}: no observed.json"
        );
        let plan = ["plan", ".", "--observed", "observed.json"];
        let human = smig(&case, &[&plan[..], &["--no-color"]].concat());
        let json = smig(&case, &[&plan[..], &["--json"]].concat());
        let detailed = smig(&case, &[&plan[..], &["--detailed-exitcode"]].concat());
        let graph = ["graph", ".", "--observed", "observed.json"];
        let dot = smig(&case, &[&graph[..], &["--format", "dot"]].concat());
        let mermaid = smig(&case, &[&graph[..], &["--format", "mermaid"]].concat());

        let secrets = secrets(&case);
        let runbook = smig(&case, &[&plan[..], &["--runbook"]].concat());
        for (what, out) in [
            ("human", &human),
            ("json", &json),
            ("dot", &dot),
            ("mermaid", &mermaid),
            ("runbook", &runbook),
        ] {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!all.contains("panicked"), "{name} {what}: {all}");
            for s in &secrets {
                assert!(
                    !all.contains(s.as_str()),
                    "{name} {what} prints a variable value"
                );
            }
        }

        insta::with_settings!({
            snapshot_path => "snapshots/golden",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(format!("{name}__human"), transcript(&human));
            insta::assert_snapshot!(format!("{name}__json"), transcript(&json));
            insta::assert_snapshot!(format!("{name}__dot"), transcript(&dot));
            insta::assert_snapshot!(format!("{name}__mermaid"), transcript(&mermaid));
            insta::assert_snapshot!(format!("{name}__runbook"), transcript(&runbook));
        });

        let code = human.status.code();
        assert_eq!(json.status.code(), code, "{name}: --json exits differently");
        if code != Some(0) {
            // A refused plan (e.g. a broken invariant) exits 1 whatever the flags.
            assert_eq!(detailed.status.code(), Some(1), "{name}");
            continue;
        }
        let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        let changes =
            smig::planfile::PlanFile::parse(&String::from_utf8_lossy(&json.stdout), &name)
                .unwrap()
                .summary
                .has_changes();
        assert_eq!(
            detailed.status.code(),
            Some(if changes { 2 } else { 0 }),
            "{name}: --detailed-exitcode"
        );

        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("plan.json");
        let out = smig(
            &case,
            &[&plan[..], &["--no-color", "--out", saved.to_str().unwrap()]].concat(),
        );
        assert_eq!(out.status.code(), Some(0), "{name}: --out");
        let shown = smig(&case, &["show", "--no-color", saved.to_str().unwrap()]);
        assert_eq!(shown.stdout, human.stdout, "{name}: show differs from plan");
    }
}
