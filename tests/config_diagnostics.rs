//! Golden diagnostics: every invalid configuration under `testdata/invalid/<case>/` renders to
//! a stable report (insta snapshot) and produces exactly the codes listed in its `expect` file.
//!
//! A case holds `*.smig.hcl` files, and optionally `vars.hcl` (a `--var-file`), `cli`
//! (`name=value` lines for `--var`) and `mode` (`plan`; `validate` otherwise).

use miette::{GraphicalReportHandler, GraphicalTheme, ThemeCharacters, ThemeStyles};
use smig::config::{self, Code, ConfigErrors, Mode, SourceFile, VarInputs};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn render(errors: &ConfigErrors) -> String {
    let theme = GraphicalTheme {
        characters: ThemeCharacters::ascii(),
        styles: ThemeStyles::none(),
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    handler
        .render_report(&mut out, errors)
        .expect("rendering into a String");
    out
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("testdata/invalid")
        .expect("testdata/invalid exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn load_case(dir: &Path) -> (Result<smig::model::Landscape, ConfigErrors>, Vec<String>) {
    let mut sources = Vec::new();
    let mut inputs = VarInputs::default();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let shown = format!(
            "testdata/invalid/{}/{name}",
            dir.file_name().unwrap().to_string_lossy()
        );
        if name.ends_with(".smig.hcl") {
            sources.push(SourceFile::new(shown, fs::read_to_string(f).unwrap()));
        } else if name.ends_with(".hcl") {
            inputs
                .files
                .push(SourceFile::new(shown, fs::read_to_string(f).unwrap()));
        } else if name == "cli" {
            for line in fs::read_to_string(f).unwrap().lines() {
                let (k, v) = line.split_once('=').expect("name=value");
                inputs.cli.push((k.to_string(), v.to_string()));
            }
        }
    }
    let mode = match fs::read_to_string(dir.join("mode"))
        .as_deref()
        .map(str::trim)
    {
        Ok("plan") => Mode::Plan,
        _ => Mode::Validate,
    };
    let expect: Vec<String> = fs::read_to_string(dir.join("expect"))
        .unwrap_or_else(|_| panic!("{} has an expect file", dir.display()))
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    (config::load(&sources, &inputs, mode), expect)
}

#[test]
fn invalid_configurations_render_golden_diagnostics() {
    let cases = cases();
    assert!(cases.len() >= 15, "at least 15 invalid cases");
    let mut covered = BTreeSet::new();
    for dir in cases {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let (result, expect) = load_case(&dir);
        let errors = match result {
            Ok(_) => panic!("case {case} loaded without errors"),
            Err(e) => e,
        };
        let mut got: Vec<String> = errors
            .codes()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        got.sort();
        let mut want = expect.clone();
        want.sort();
        assert_eq!(got, want, "codes of case {case}");
        covered.extend(expect);
        for e in errors.errors() {
            assert!(
                miette::Diagnostic::help(e).is_some(),
                "case {case}: `{}` has help",
                e.message()
            );
            if e.code() != Code::UndeclaredVariable && e.code() != Code::WrongType {
                assert!(
                    e.span().is_some(),
                    "case {case}: `{}` has a span",
                    e.message()
                );
            }
        }
        let rendered = render(&errors);
        assert!(
            !rendered.contains("canary"),
            "case {case} leaks a sensitive value:\n{rendered}"
        );
        insta::assert_snapshot!(case, rendered);
    }
    for code in Code::ALL {
        if *code == Code::TooManyErrors {
            continue;
        }
        assert!(
            covered.contains(code.as_str()),
            "no invalid case produces {code}"
        );
    }
}

#[test]
fn too_many_errors_are_capped() {
    let src = r#"
environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"
    network = "netns:dc-hv1"
  }
}
subnet "app" { cidr = "10.0.0.0/16" }
vm "web" {
  count   = 500
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "10.0.0.1"
}
"#;
    let err = config::load(
        &[SourceFile::new("t.smig.hcl", src)],
        &VarInputs::default(),
        Mode::Validate,
    )
    .unwrap_err();
    assert_eq!(err.errors().len(), config::ConfigErrors::MAX_REPORTED + 1);
    assert_eq!(err.codes().last(), Some(&Code::TooManyErrors));
    assert!(err
        .errors()
        .last()
        .unwrap()
        .message()
        .starts_with("399 more"));
}
