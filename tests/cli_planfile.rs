//! Saved plans: round trips, atomic writes, and hostile files (each a clear error, never a
//! panic).

mod support;

use smig::plan::Plan;
use smig::planfile::{self, PlanFile, PlanFileError, FORMAT_VERSION};
use std::path::Path;
use support::*;

fn graph_shape(plan: &Plan) -> (Vec<smig::plan::Step>, Vec<(usize, usize)>) {
    let nodes = plan.graph.node_weights().cloned().collect();
    let mut edges: Vec<(usize, usize)> = plan
        .graph
        .raw_edges()
        .iter()
        .map(|e| (e.source().index(), e.target().index()))
        .collect();
    edges.sort();
    (nodes, edges)
}

#[test]
fn write_then_read_gives_the_same_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.smigplan");
    for plan in [reference_plan(), kitchen_sink_plan(), Plan::default()] {
        let doc = doc_of(&plan, invariants(true));
        planfile::write(&path, &doc).unwrap();
        // The file is the document's text, written as it is serialized.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), doc.to_json());
        let back = planfile::read(&path).unwrap();
        assert_eq!(back, doc);
        let rebuilt = back.to_plan();
        assert_eq!(graph_shape(&rebuilt), graph_shape(&plan));
        assert_eq!(rebuilt.changes, plan.changes);
        assert_eq!(rebuilt.warnings, plan.warnings);
    }
}

#[test]
fn write_replaces_atomically_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    std::fs::write(&path, "old").unwrap();
    planfile::write(&path, &reference_doc()).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["plan.json".to_string()]);
    assert_eq!(planfile::read(&path).unwrap(), reference_doc());
}

#[test]
fn write_into_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = planfile::write(&dir.path().join("no/such/dir/p.json"), &reference_doc()).unwrap_err();
    assert!(matches!(e, PlanFileError::Io { op: "write", .. }), "{e}");
}

fn parse(text: &str) -> Result<PlanFile, PlanFileError> {
    PlanFile::parse(text, "hostile.json")
}

fn good_json() -> serde_json::Value {
    serde_json::from_str(&reference_doc().to_json()).unwrap()
}

#[test]
fn test_empty_and_truncated_files() {
    assert!(matches!(parse(""), Err(PlanFileError::Truncated { .. })));
    assert!(matches!(parse("{"), Err(PlanFileError::Truncated { .. })));
    let text = reference_doc().to_json();
    // Every cut of a valid file is refused, most of them as truncated.
    let mut truncated = 0;
    let mut cuts = 0;
    for cut in (0..text.len() - 2)
        .step_by(3)
        .filter(|c| text.is_char_boundary(*c))
    {
        cuts += 1;
        match parse(&text[..cut]) {
            Ok(_) => panic!("a plan cut at byte {cut} was accepted"),
            Err(PlanFileError::Truncated { path, .. }) => {
                assert_eq!(path, "hostile.json");
                truncated += 1;
            }
            Err(_) => {}
        }
    }
    assert!(truncated > cuts / 2, "{truncated} of {cuts}");
    let e = parse(&text[..text.len() / 2]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn test_not_a_plan() {
    for text in [
        "[]",
        "42",
        "\"plan\"",
        "null",
        "{}",
        "{\"steps\": []}",
        "not json at all",
        "{:{",
    ] {
        let e = parse(text).unwrap_err();
        assert!(
            matches!(
                e,
                PlanFileError::Malformed { .. } | PlanFileError::Truncated { .. }
            ),
            "{text}: {e}"
        );
    }
    let e = parse("{}").unwrap_err();
    assert!(e.to_string().contains("not a smig plan"), "{e}");
}

#[test]
fn test_unknown_format_versions() {
    for v in [
        serde_json::json!(2),
        serde_json::json!(0),
        serde_json::json!("1"),
        serde_json::json!(1.5),
        serde_json::json!(null),
    ] {
        let mut doc = good_json();
        doc["format_version"] = v.clone();
        let e = parse(&doc.to_string()).unwrap_err();
        assert!(
            matches!(e, PlanFileError::UnsupportedVersion { .. }),
            "{v}: {e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("reads version {FORMAT_VERSION}")),
            "{e}"
        );
    }
    // A newer version is refused for its version, not for fields this build does not know.
    let mut doc = good_json();
    doc["format_version"] = 2.into();
    doc["new_field"] = true.into();
    assert!(matches!(
        parse(&doc.to_string()),
        Err(PlanFileError::UnsupportedVersion { .. })
    ));
}

#[test]
fn test_unknown_and_missing_fields() {
    let mut doc = good_json();
    doc["steps"][0]["extra"] = 1.into();
    let e = parse(&doc.to_string()).unwrap_err();
    assert!(matches!(e, PlanFileError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("extra"), "{e}");
    let mut doc = good_json();
    doc.as_object_mut().unwrap().remove("fingerprints");
    assert!(matches!(
        parse(&doc.to_string()),
        Err(PlanFileError::Malformed { .. })
    ));
    let mut doc = good_json();
    doc["steps"][1]["action"]["op"] = "format_disk".into();
    assert!(matches!(
        parse(&doc.to_string()),
        Err(PlanFileError::Malformed { .. })
    ));
}

#[test]
fn test_deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{\"a\":"] {
        let text = format!("{{\"format_version\": 1, \"x\": {}", open.repeat(10_000));
        assert!(parse(&text).is_err());
    }
    let mut doc = good_json();
    doc["warnings"] =
        serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
    assert!(parse(&doc.to_string()).is_err());
}

fn inconsistent(doc: serde_json::Value, needle: &str) {
    match parse(&doc.to_string()) {
        Err(e @ PlanFileError::Inconsistent { .. }) => {
            assert!(e.to_string().contains(needle), "{e}")
        }
        other => panic!("expected an inconsistency ({needle}), got {other:?}"),
    }
}

#[test]
fn test_bad_dependencies() {
    let mut doc = good_json();
    doc["steps"][0]["depends_on"] = serde_json::json!([2]);
    inconsistent(doc, "not an earlier step");
    let mut doc = good_json();
    doc["steps"][2]["depends_on"] = serde_json::json!([3]);
    inconsistent(doc, "not an earlier step");
    let mut doc = good_json();
    doc["steps"][2]["depends_on"] = serde_json::json!([0]);
    inconsistent(doc, "not an earlier step");
    let mut doc = good_json();
    doc["steps"][4]["depends_on"] = serde_json::json!([2, 2]);
    inconsistent(doc, "twice");
    let mut doc = good_json();
    doc["steps"][2]["depends_on"] = serde_json::json!([18446744073709551615u64]);
    inconsistent(doc, "not an earlier step");
}

#[test]
fn test_bad_numbering_keys_fingerprints_and_summary() {
    let mut doc = good_json();
    doc["steps"][1]["number"] = 5.into();
    inconsistent(doc, "numbered");
    let mut doc = good_json();
    doc["steps"][1]["key"] = doc["steps"][0]["key"].clone();
    inconsistent(doc, "twice");
    let mut doc = good_json();
    doc["fingerprints"]["observed"] = "sha256:xyz".into();
    inconsistent(doc, "observed fingerprint");
    let mut doc = good_json();
    doc["summary"]["steps"] = 1.into();
    inconsistent(doc, "summary");
}

#[test]
fn test_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        planfile::read(&missing),
        Err(PlanFileError::Io { op: "read", .. })
    ));
    let binary = dir.path().join("binary.json");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x7b]).unwrap();
    let e = planfile::read(&binary).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    assert!(planfile::read(Path::new(dir.path())).is_err());
}

#[test]
fn plan_files_hold_no_secret() {
    let mut plan = reference_plan();
    plan.changes[0].after = Some(serde_json::json!({
        "psk": smig::model::Secret::new("canary-77aa"),
    }));
    let doc = doc_of(&plan, invariants(true));
    assert!(!doc.to_json().contains("canary"));
}

#[test]
fn a_stale_plan_is_refused_saying_what_changed() {
    let doc = reference_doc();
    doc.check_fresh(&fingerprints(), "p.json").unwrap();
    let mut other = fingerprints();
    other.observed = format!("sha256:{}", "c3".repeat(32));
    let e = doc.check_fresh(&other, "p.json").unwrap_err();
    assert!(matches!(e, PlanFileError::Stale { .. }));
    assert_eq!(
        e.to_string(),
        "the plan p.json is stale: the discovered landscape changed since it was made"
    );
    other.config = format!("sha256:{}", "d4".repeat(32));
    let e = doc.check_fresh(&other, "p.json").unwrap_err();
    assert!(
        e.to_string()
            .contains("the configuration (files or variable values) and the discovered landscape"),
        "{e}"
    );
}

#[test]
fn observed_fingerprint_follows_the_landscape() {
    let mut o = smig::model::Observed::empty();
    let a = planfile::observed_fingerprint(&o);
    assert_eq!(a, planfile::observed_fingerprint(&o.clone()));
    o.hosts.insert(host("dc.hv1"), Default::default());
    let b = planfile::observed_fingerprint(&o);
    assert_ne!(a, b);
    // The order in which discovery lists rules does not matter; their content does.
    let rule = |vm: &str| smig::model::BlockRule {
        vm: vm.into(),
        address: "192.168.10.11".parse().unwrap(),
        peers: vec![],
        allow_ipsec: false,
    };
    let mut x = o.clone();
    x.hosts.get_mut(&host("dc.hv1")).unwrap().block_rules = vec![rule("web"), rule("db")];
    let mut y = o.clone();
    y.hosts.get_mut(&host("dc.hv1")).unwrap().block_rules = vec![rule("db"), rule("web")];
    assert_eq!(
        planfile::observed_fingerprint(&x),
        planfile::observed_fingerprint(&y)
    );
    assert_ne!(planfile::observed_fingerprint(&x), b);
}

#[test]
fn a_document_survives_plan_and_back() {
    for plan in [reference_plan(), kitchen_sink_plan()] {
        let doc = doc_of(&plan, invariants(false));
        assert_eq!(PlanFile::new(doc.to_plan(), doc.fingerprints.clone()), doc);
    }
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn damaged_plans_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let good = reference_doc().to_json();
            let mut bytes = good.clone().into_bytes();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Ok(text) = String::from_utf8(bytes) {
                if let Ok(doc) = parse(&text) {
                    // Only edits that keep a valid plan (e.g. inside a string) get through,
                    // and what gets through still passes every check.
                    prop_assert!(doc.steps.iter().all(|s| s.depends_on.iter().all(|d| *d < s.number)));
                }
            }
        }
    }
}
