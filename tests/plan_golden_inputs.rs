//! The golden plan cases' inputs (`testdata/plans/<case>/{main.smig.hcl, observed.json}`) hold
//! exactly the landscapes of `tests/plan_cases`, so renderer snapshots taken from the files and
//! the branch tests in Rust describe the same plans. `SMIG_BLESS=1` rewrites the files.

mod plan_cases;

use smig::discover::snapshot::Snapshot;
use smig::plan::{build, PlanOptions};
use std::path::PathBuf;

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/plans")
        .join(case)
}

#[test]
fn case_files_match_the_rust_fixtures() {
    let bless = std::env::var_os("SMIG_BLESS").is_some();
    for (name, f) in plan_cases::cases() {
        let d = dir(name);
        let hcl = f.to_hcl();
        let json = serde_json::to_string_pretty(&f.observed).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("main.smig.hcl"), &hcl).unwrap();
            std::fs::write(d.join("observed.json"), &json).unwrap();
        }
        let on_disk = std::fs::read_to_string(d.join("main.smig.hcl"))
            .unwrap_or_else(|e| panic!("{name}: {e} (run with SMIG_BLESS=1 to write)"));
        // Alignment may change under `smig fmt`; the tokens may not.
        let tokens = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(tokens(&on_disk), tokens(&hcl), "{name}/main.smig.hcl");
        hcl::parse(&on_disk).unwrap_or_else(|e| panic!("{name}/main.smig.hcl: {e}"));

        let path = d.join("observed.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let observed = Snapshot::parse(&text, &path.display().to_string()).unwrap();
        assert_eq!(observed, f.observed, "{name}/observed.json");

        // The snapshot plans like the fixture it was written from.
        let from_files = build(&f.desired, &observed, &PlanOptions::default()).unwrap();
        let from_rust = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap();
        let keys = |p: &smig::plan::Plan| {
            p.graph
                .node_weights()
                .map(|s| s.key.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&from_files), keys(&from_rust), "{name}");
    }
}

#[test]
fn the_reference_case_is_the_reference_landscape() {
    let f = plan_cases::case("01-live-block-first");
    let reference = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/reference/main.smig.hcl"),
    )
    .unwrap();
    // Same blocks and placements as SPEC.md's example (which takes its key from a variable).
    for line in [
        "host    = environment.cloud.host.c1",
        "libvirt = \"qemu+tls://10.78.0.21/system\"",
        "between = [vm.web, vm.db]",
        "tls_ports = [443, 636, 5432]",
    ] {
        assert!(reference.contains(line), "reference lacks {line}");
        assert!(f.to_hcl().contains(line), "fixture lacks {line}");
    }
}
