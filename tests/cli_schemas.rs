//! The published JSON Schemas: the committed files equal the generated ones, and the plan
//! documents and recorded snapshots smig reads and writes validate against them.
//!
//! After changing a document type, regenerate with
//! `SMIG_WRITE_SCHEMAS=1 cargo test --test cli_schemas`.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn committed_equals_generated(file: &str, generated: String) {
    let path = root().join("schemas").join(file);
    if std::env::var_os("SMIG_WRITE_SCHEMAS").is_some() {
        // Atomically: the other tests read the file meanwhile.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &generated).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == generated,
        "{} is out of date; regenerate with SMIG_WRITE_SCHEMAS=1 cargo test --test cli_schemas",
        path.display()
    );
}

#[test]
fn plan_schema_is_up_to_date() {
    committed_equals_generated("plan.schema.json", smig::schema::plan_schema());
}

#[test]
fn observed_schema_is_up_to_date() {
    committed_equals_generated("observed.schema.json", smig::schema::observed_schema());
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schemas").join(file)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{file} must be draft 2020-12"
    );
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

#[test]
fn plan_documents_validate() {
    let v = validator("plan.schema.json");
    for (what, doc) in [
        ("reference", reference_doc()),
        (
            "kitchen sink",
            doc_of(&kitchen_sink_plan(), invariants(false)),
        ),
        ("empty", doc_of(&smig::plan::Plan::default(), vec![])),
    ] {
        let value: Value = serde_json::from_str(&doc.to_json()).unwrap();
        assert_valid(&v, &value, what);
    }
}

#[test]
fn plan_schema_rejects_what_readers_reject() {
    let v = validator("plan.schema.json");
    let good: Value = serde_json::from_str(&reference_doc().to_json()).unwrap();
    let mut unknown = good.clone();
    unknown["surprise"] = Value::Bool(true);
    assert!(!v.is_valid(&unknown));
    let mut kind = good.clone();
    kind["steps"][0]["kind"] = "teleport".into();
    assert!(!v.is_valid(&kind));
    let mut fp = good.clone();
    fp["fingerprints"]["config"] = "md5:1234".into();
    assert!(!v.is_valid(&fp));
    let mut op = good;
    op["steps"][0]["action"]["op"] = "format_disk".into();
    assert!(!v.is_valid(&op));
}

fn json_files(dir: &Path, name_ok: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            json_files(&p, name_ok, out);
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(name_ok) {
            out.push(p);
        }
    }
}

#[test]
fn recorded_snapshots_validate() {
    let v = validator("observed.schema.json");
    let mut files = Vec::new();
    let is_snapshot = |n: &str| n == "observed.json" || n.ends_with(".observed.json");
    json_files(&root().join("testdata"), &is_snapshot, &mut files);
    json_files(&root().join("examples"), &is_snapshot, &mut files);
    assert!(
        !files.is_empty(),
        "no recorded snapshot under testdata/ or examples/"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_valid(&v, &value, &f.display().to_string());
        smig::discover::snapshot::Snapshot::parse(&text, &f.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn observed_schema_rejects_a_misspelt_field() {
    let v = validator("observed.schema.json");
    let bad: Value =
        serde_json::from_str(r#"{"version": 1, "hosts": {"dc.hv1": {"domans": {}}}}"#).unwrap();
    assert!(!v.is_valid(&bad));
    let bad_state: Value = serde_json::from_str(
        r#"{"version": 1, "hosts": {"dc.hv1": {"domains": {"db": {"state": "zombie", "persistent": true}}}}}"#,
    )
    .unwrap();
    assert!(!v.is_valid(&bad_state));
}
