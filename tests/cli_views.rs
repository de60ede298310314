//! The plan views on hand-built plans: human, JSON, DOT, Mermaid and runbook renderings.

mod support;

use smig::cli::views::{dot::Dot, human::Human, mermaid::Mermaid, runbook::Runbook};
use smig::cli::views::{Paint, PlanView};
use smig::plan::{Action, Inverse, Plan};
use smig::planfile::PlanFile;
use support::*;

fn human(doc: &PlanFile) -> String {
    Human {
        paint: Paint::PLAIN,
    }
    .render(doc)
}

#[test]
fn human_plan_of_the_reference_move() {
    insta::assert_snapshot!(human(&reference_doc()));
}

#[test]
fn human_plan_numbers_steps_with_dependencies_and_hosts() {
    let out = human(&reference_doc());
    assert!(out.contains("#2  migrate"), "{out}");
    let migrate = out.lines().find(|l| l.contains("migrate")).unwrap();
    assert!(migrate.contains("dc.hv2 → cloud.c1"), "{migrate}");
    assert!(migrate.contains("after #1"), "{migrate}");
    assert!(migrate.contains("[330]"), "{migrate}");
    let secure = out
        .lines()
        .find(|l| l.contains("connections.secure"))
        .unwrap();
    assert!(secure.contains("after #2, #3, #4"), "{secure}");
    assert!(
        out.contains("Plan: 1 link to add, 1 VM to move, 7 steps."),
        "{out}"
    );
    assert!(out.contains("✓ 7."), "{out}");
}

#[test]
fn human_plan_diffs_discovered_against_desired() {
    let out = human(&reference_doc());
    assert!(out.contains("- host = \"dc.hv2\""), "{out}");
    assert!(out.contains("+ host = \"cloud.c1\""), "{out}");
    // Only the changed line and its neighbours, not the whole VM.
    assert!(!out.contains("address = \"192.168.10.12\""), "{out}");
    assert!(out.contains("+ ipsec.auth.psk = (sensitive)"), "{out}");
}

#[test]
fn human_plan_is_plain_without_colour_and_coloured_with_it() {
    let doc = reference_doc();
    assert!(!human(&doc).contains('\u{1b}'));
    let coloured = Human {
        paint: Paint { color: true },
    }
    .render(&doc);
    assert!(coloured.contains("\u{1b}["));
    // Same text once the escapes are gone.
    let stripped = strip_ansi(&coloured);
    assert_eq!(stripped, human(&doc));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn human_plan_shows_failed_invariants_warnings_and_points_of_no_return() {
    let mut plan = reference_plan();
    plan.warnings.push(
        "policy allows insecure transport: migrations may cross untrusted networks in cleartext"
            .into(),
    );
    let ix = petgraph::graph::NodeIndex::new(1);
    plan.graph[ix].inverse = Inverse::PointOfNoReturn {
        reason: "post-copy switchover".into(),
    };
    if let Action::Migrate { tls, .. } = &mut plan.graph[ix].action {
        *tls = false;
    }
    let doc = doc_of(&plan, invariants(false));
    let out = human(&doc);
    insta::assert_snapshot!(out);
    assert!(out.contains("✗ 1."), "{out}");
    assert!(
        out.contains("Warning: policy allows insecure transport"),
        "{out}"
    );
    assert!(
        out.contains("! point of no return: post-copy switchover"),
        "{out}"
    );
    assert!(
        out.contains(
            "! migration stream without TLS: guest memory crosses the network in cleartext"
        ),
        "{out}"
    );
    assert!(out.contains("smig refuses to apply this plan"), "{out}");
    let red = Human {
        paint: Paint { color: true },
    }
    .render(&doc);
    let warning = red
        .lines()
        .find(|l| l.contains("insecure transport"))
        .unwrap();
    assert!(warning.contains("\u{1b}[31m"), "{warning:?}");
}

#[test]
fn human_plan_without_changes() {
    let doc = doc_of(&Plan::default(), invariants(true));
    let out = human(&doc);
    assert!(out.contains("No changes."), "{out}");
    assert!(!doc.summary.has_changes());
}

#[test]
fn dot_graph() {
    let out = Dot.render(&reference_doc());
    insta::assert_snapshot!(out);
    assert!(
        out.contains("s1 [label = \"#1 block vm.db @dc.hv2\"]"),
        "{out}"
    );
    assert!(out.contains("s1 -> s2;"), "{out}");
    assert_eq!(out.matches("->").count(), 7);
}

#[test]
fn mermaid_graph() {
    let out = Mermaid.render(&reference_doc());
    insta::assert_snapshot!(out);
    assert!(out.starts_with("flowchart TD\n"));
    assert!(out.contains("s2[\"#2 migrate vm.db @dc.hv2\"]"), "{out}");
    assert_eq!(out.matches("-->").count(), 7);
}

#[test]
fn graph_labels_are_escaped() {
    let mut plan = reference_plan();
    plan.graph[petgraph::graph::NodeIndex::new(0)].subject = "vm.\"x\";<y>\\".into();
    let doc = doc_of(&plan, invariants(true));
    let dot = Dot.render(&doc);
    assert!(dot.contains(r#"vm.\"x\";<y>\\ @"#), "{dot}");
    let mermaid = Mermaid.render(&doc);
    assert!(
        mermaid.contains("vm.#quot;x#quot;#59;#lt;y#gt;\\ @"),
        "{mermaid}"
    );
}

#[test]
fn runbook() {
    let mut plan = reference_plan();
    plan.graph[petgraph::graph::NodeIndex::new(1)].inverse = Inverse::PointOfNoReturn {
        reason: "post-copy switchover: the source no longer holds the guest's memory".into(),
    };
    let doc = doc_of(&plan, invariants(true));
    let out = Runbook.render(&doc);
    insta::assert_snapshot!(out);
    assert!(out.contains("## Prerequisites"));
    assert!(
        out.contains("### 2. migrate vm.db dc.hv2 → cloud.c1"),
        "{out}"
    );
    assert!(out.contains("**Step 2** (migrate vm.db)"), "{out}");
    assert!(
        out.contains("`swanctl --list-sas --ike smig-web_db-cloud.c1-dc.hv1`"),
        "{out}"
    );
    assert!(
        out.contains("**Undo:** Unload the IPsec connection"),
        "{out}"
    );
}

#[test]
fn views_never_print_a_secret() {
    let mut plan = reference_plan();
    // Even if a secret reached a change, it is serialized redacted.
    plan.changes[0].after =
        Some(serde_json::to_value(smig::model::Secret::new("canary-5e1f")).unwrap());
    let doc = doc_of(&plan, invariants(true));
    for out in [
        human(&doc),
        Runbook.render(&doc),
        doc.to_json(),
        Dot.render(&doc),
        Mermaid.render(&doc),
    ] {
        assert!(!out.contains("canary"), "{out}");
    }
}
