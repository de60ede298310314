//! Every example under `examples/` loads (validate mode), and its HCL, converted to JSON the
//! way hcl-rs does it, validates against `schemas/landscape.schema.json`.

use smig::config::{self, Mode, SourceFile, VarInputs};
use std::fs;
use std::path::{Path, PathBuf};

fn schema() -> jsonschema::Validator {
    let text = fs::read_to_string("schemas/landscape.schema.json").expect("schema file");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn example_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![PathBuf::from("examples")];
    while let Some(dir) = stack.pop() {
        let mut has_config = false;
        for entry in fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".smig.hcl") {
                has_config = true;
            }
        }
        if has_config {
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs
}

fn sources(dir: &Path) -> Vec<SourceFile> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".smig.hcl"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| SourceFile::new(p.to_string_lossy(), fs::read_to_string(p).unwrap()))
        .collect()
}

#[test]
fn examples_load_and_match_the_schema() {
    let validator = schema();
    let dirs = example_dirs();
    assert!(
        dirs.iter().any(|d| d.ends_with("reference")),
        "the reference example is found"
    );
    for dir in dirs {
        let srcs = sources(&dir);
        if let Err(e) = config::load(&srcs, &VarInputs::default(), Mode::Validate) {
            let codes: Vec<_> = e
                .errors()
                .iter()
                .map(|x| format!("{}: {}", x.code(), x.message()))
                .collect();
            panic!("{} does not load: {codes:#?}", dir.display());
        }
        for src in &srcs {
            let json: serde_json::Value = hcl::from_str(&src.text).expect("HCL converts to JSON");
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{} at {}", e, e.instance_path))
                .collect();
            assert!(
                errors.is_empty(),
                "{} does not match the schema: {errors:#?}",
                src.name
            );
        }
    }
}

#[test]
fn fleet_example_expands() {
    let srcs = sources(Path::new("examples/fleet"));
    let l = config::load(&srcs, &VarInputs::default(), Mode::Validate).unwrap();
    assert_eq!(l.vms.len(), 42);
    assert_eq!(l.secure_links.len(), 2);
    assert_eq!(l.secure_links["web_to_db[\"orders\"]"].between.len(), 41);
    assert_eq!(l.vms["db[\"billing\"]"].domain, "db-billing");
    assert_eq!(l.vms["web[4]"].host.0, "dc.hv2");
    assert_eq!(l.policy.parallelism, 8);
}

#[test]
fn schema_rejects_what_the_language_rejects() {
    let validator = schema();
    for bad in [
        "virtual_machine \"x\" {\n  host = \"a.b\"\n}\n",
        "vm \"x\" {\n  host = \"a.b\"\n  subnet = \"s\"\n}\n",
        "vm \"x\" {\n  host = \"a.b\"\n  subnet = \"s\"\n  address = \"10.0.0.300\"\n}\n",
        "environment \"dc\" {\n  trusted = \"yes\"\n}\n",
        "policy {\n  tls_ports = [70000]\n}\n",
        "vm \"x\" {\n  host = \"a.b\"\n  subnet = \"s\"\n  address = \"10.0.0.1\"\n  migration {\n    mode = \"warm\"\n  }\n}\n",
        "secure_link \"l\" {\n  between = [\"a\", \"b\"]\n  ipsec {\n    proposals = [\"x\"]\n    psk = \"k\"\n    cert = \"c\"\n  }\n}\n",
    ] {
        let json: serde_json::Value = hcl::from_str(bad).unwrap();
        assert!(!validator.is_valid(&json), "the schema accepts:\n{bad}");
    }
}

#[test]
fn examples_are_canonically_formatted() {
    for dir in example_dirs() {
        for src in sources(&dir) {
            let formatted = config::format(&src).expect("examples parse");
            assert_eq!(
                formatted, src.text,
                "{} is not in canonical format",
                src.name
            );
        }
    }
}
