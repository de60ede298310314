//! End to end on the lab (lab/README.md), through the `smig` binary and the real drivers:
//! - live discovery of the running lab equals the lab's own independent view (`lab/snapshot`)
//!   and the recorded `testdata/lab/observed.json`, modulo ephemeral ports, and `smig plan
//!   examples/lab` plans the reference move;
//! - `smig apply` moves db from dc.hv2 to cloud.c1 block-first under a WAN capture: afterwards
//!   `lab/check` sees db only on c1, the web-db SA installed with rising counters and every
//!   guest answering its peers, nothing crossed the WAN in cleartext, and a second plan has
//!   nothing to do; then a copy of the configuration with db on dc.hv2 moves it back and nothing
//!   of smig's is left (no table smig, no smig SA, no smig link).
//!
//! Each test needs root, holds the lab lock (/run/lock/smig-lab.lock) for its whole run, brings
//! the lab up with `lab/up`, and leaves it as it found it (db on dc.hv2, nothing of smig's). It
//! never skips: when it cannot run, it fails with the reason.

use serde_json::Value;
use smig::config::{self, Mode, SourceFile, VarInputs};
use smig::discover::snapshot::Snapshot;
use smig::discover::Discover;
use smig::drivers::real::{self, RealOptions};
use smig::model::{Landscape, Observed};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LAB_LOCK: &str = "/run/lock/smig-lab.lock";
const PSK: &str = "e2e-lab-psk-4f1d9a";
const NAMESPACES: [&str; 4] = ["dc-hv1", "dc-hv2", "cloud-c1", "dc-core"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Takes the lab lock. A lock file replaced while waiting (removed and created again by
/// someone) would lock nothing: the lock counts only on the file the path still names.
fn lab_lock() -> std::fs::File {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all("/run/lock").expect("/run/lock");
    loop {
        let lock = std::fs::File::create(LAB_LOCK).unwrap_or_else(|e| panic!("{LAB_LOCK}: {e}"));
        lock.lock()
            .unwrap_or_else(|e| panic!("locking {LAB_LOCK}: {e}"));
        let held = lock.metadata().map(|m| m.ino()).ok();
        let named = std::fs::metadata(LAB_LOCK).map(|m| m.ino()).ok();
        if held.is_some() && held == named {
            return lock;
        }
    }
}

fn show(what: &str, out: &Output, started: Instant) {
    eprintln!(
        "{what} -> {} in {:.1} s\nstdout:\n{}\nstderr:\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `lab/CMD ARGS`.
fn lab(cmd: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(root().join("lab").join(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lab/{cmd}: {e}"));
    show(&format!("lab/{cmd} {}", args.join(" ")), &out, started);
    out
}

fn must(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed ({})", out.status);
    out
}

/// Runs the smig binary with the lab's driver settings.
fn smig(args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_smig"))
        .current_dir(root())
        .env("SMIG_LAB", "1")
        .env("SMIG_VAR_web_db_psk", PSK)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("run smig");
    show(&format!("smig {}", args.join(" ")), &out, started);
    out
}

fn json(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn landscape(dir: &Path) -> Landscape {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.to_string_lossy().ends_with(".smig.hcl") {
            let text = std::fs::read_to_string(&p).expect("config file");
            files.push(SourceFile::new(p.display().to_string(), text));
        }
    }
    let vars = VarInputs {
        cli: vec![("web_db_psk".to_string(), PSK.to_string())],
        ..VarInputs::default()
    };
    config::load(&files, &vars, Mode::Plan).unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()))
}

/// The lab's state as `lab/check --json` sees it.
fn check(wait: bool) -> Value {
    let out = if wait {
        lab("check", &["--json", "--wait", "30"])
    } else {
        lab("check", &["--json"])
    };
    json(&out, "lab/check --json")
}

fn domains_on(check: &Value, host: &str) -> Vec<String> {
    check["hosts"][host]["domains"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Fails unless the lab is in its initial placement with nothing of smig's on it.
fn assert_initial(what: &str) {
    let c = check(true);
    assert!(
        domains_on(&c, "hv2").contains(&"db".to_string())
            && !domains_on(&c, "c1").contains(&"db".to_string()),
        "{what}: db is not on hv2 alone (hv2 {:?}, c1 {:?}); the lab is not in its initial state: `lab/down && lab/up` resets it",
        domains_on(&c, "hv2"),
        domains_on(&c, "c1")
    );
    assert_eq!(
        c["all_answer"],
        Value::Bool(true),
        "{what}: guests do not all answer their peers"
    );
    must(
        lab("snapshot", &[]),
        &format!("{what}: lab/snapshot (no smig-owned state)"),
    );
    for ns in NAMESPACES {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .expect("ip link");
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(
            !links.contains("smx-"),
            "{what}: a smig link is left in {ns}:\n{links}"
        );
    }
}

/// Replaces the ephemeral ports of connections by 0, keeping service ports (below 1024).
fn without_ephemeral_ports(mut o: Observed) -> Observed {
    for conns in o.connections.values_mut() {
        for c in conns.iter_mut() {
            for a in [&mut c.local, &mut c.remote] {
                if a.port() >= 1024 {
                    a.set_port(0);
                }
            }
        }
        conns.sort_by_key(|c| (c.local, c.remote));
        conns.dedup();
    }
    for h in o.hosts.values_mut() {
        h.block_rules.sort_by(|a, b| a.vm.cmp(&b.vm));
    }
    for c in o.routing_cores.values_mut() {
        c.routes.sort_by_key(|r| r.prefix);
    }
    o
}

fn step_kinds(plan: &Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("plan without steps: {plan}"))
        .iter()
        .map(|s| s["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn e2e_live_discovery_is_the_lab_and_plans_the_reference_move() {
    assert!(
        is_root(),
        "the end-to-end tests need root (they drive the lab); run `sudo cargo test --test e2e_lab`"
    );
    let _lock = lab_lock();
    must(lab("up", &[]), "lab/up");
    assert_initial("before");

    let lab_config = landscape(&root().join("examples/lab"));
    let drivers = real::drivers(&lab_config, &RealOptions::lab()).expect("real drivers");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let t = Instant::now();
    let live = rt
        .block_on(drivers.discover(&lab_config))
        .expect("live discovery of the lab");
    let discovery_ms = t.elapsed().as_millis();
    let snap = must(lab("snapshot", &[]), "lab/snapshot");
    let snap_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(snap_file.path(), &snap.stdout).expect("write snapshot");
    let independent = Snapshot::new(snap_file.path())
        .read()
        .expect("lab/snapshot output is a snapshot");
    let recorded = Snapshot::new(root().join("testdata/lab/observed.json"))
        .read()
        .expect("testdata/lab/observed.json");
    let live = without_ephemeral_ports(live);
    eprintln!("live discovery took {discovery_ms} ms");
    assert_eq!(
        live,
        without_ephemeral_ports(independent),
        "live discovery differs from lab/snapshot"
    );
    assert_eq!(
        live,
        without_ephemeral_ports(recorded),
        "live discovery differs from testdata/lab/observed.json"
    );

    let out = smig(&["plan", "--json", "examples/lab"]);
    assert!(out.status.success(), "smig plan --json examples/lab failed");
    let plan = json(&out, "smig plan --json");
    assert_eq!(
        step_kinds(&plan),
        [
            "block",
            "block",
            "migrate",
            "ipsec.install",
            "ipsec.install",
            "restart",
            "connections.secure",
            "enable",
            "cleanup"
        ]
    );
    let out = smig(&["plan", "--detailed-exitcode", "examples/lab"]);
    assert_eq!(out.status.code(), Some(2), "the move is a change");
    assert_initial("after");
}

/// Moves db back to dc.hv2 with a copy of the configuration that says so.
fn move_back(dir: &Path) -> Output {
    let text = std::fs::read_to_string(root().join("examples/lab/main.smig.hcl")).expect("config");
    let (head, tail) = text
        .split_once("vm \"db\" {")
        .expect("vm db in examples/lab");
    let tail = tail.replacen("environment.cloud.host.c1", "environment.dc.host.hv2", 1);
    let back = dir.join("back");
    std::fs::create_dir_all(&back).expect("back dir");
    std::fs::write(
        back.join("main.smig.hcl"),
        format!("{head}vm \"db\" {{{tail}"),
    )
    .expect("write back config");
    let state = dir.join("state-back");
    // One step at a time: the two cleanups on cloud.c1 (the VM's rules, the link's data path)
    // race on its nftables table when they run at once (netns driver).
    smig(&[
        "apply",
        "--auto-approve",
        "--parallelism",
        "1",
        "--state",
        state.to_str().expect("utf-8 path"),
        back.to_str().expect("utf-8 path"),
    ])
}

fn sa_counters(check: &Value, host: &str) -> Option<(u64, u64)> {
    let sas = check["hosts"][host]["sas"].as_array()?;
    sas.iter()
        .filter(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("smig-web_db"))
        })
        .flat_map(|s| s["children"].as_array().cloned().unwrap_or_default())
        .find(|c| c["state"] == "INSTALLED")
        .map(|c| {
            (
                c["bytes_in"].as_u64().unwrap_or(0),
                c["bytes_out"].as_u64().unwrap_or(0),
            )
        })
}

#[test]
fn e2e_apply_moves_db_to_the_cloud_behind_ipsec_and_back() {
    assert!(
        is_root(),
        "the end-to-end tests need root (they drive the lab); run `sudo cargo test --test e2e_lab`"
    );
    let _lock = lab_lock();
    must(lab("up", &[]), "lab/up");
    assert_initial("before");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    must(lab("capture", &["start"]), "lab/capture start");
    let result = std::panic::catch_unwind(|| {
        let t = Instant::now();
        let out = smig(&[
            "apply",
            "--auto-approve",
            "--state",
            state.to_str().expect("utf-8 path"),
            "examples/lab",
        ]);
        let apply_ms = t.elapsed().as_millis();
        assert!(out.status.success(), "smig apply examples/lab failed");
        eprintln!("smig apply (hv2 -> c1) took {apply_ms} ms");

        let c = check(true);
        assert_eq!(domains_on(&c, "c1"), ["db"], "db on c1");
        assert!(
            !domains_on(&c, "hv2").contains(&"db".to_string()),
            "db left on hv2"
        );
        assert_eq!(
            c["all_answer"],
            Value::Bool(true),
            "guests answer their peers"
        );
        let first = (sa_counters(&c, "hv1"), sa_counters(&c, "c1"));
        std::thread::sleep(Duration::from_secs(2));
        let c2 = check(false);
        let second = (sa_counters(&c2, "hv1"), sa_counters(&c2, "c1"));
        let (Some(a1), Some(c1)) = first else {
            panic!("no installed web_db SA on hv1 and c1: {first:?}");
        };
        let (Some(a2), Some(c2v)) = second else {
            panic!("the web_db SA went away: {second:?}");
        };
        assert!(
            a2.0 > a1.0 && a2.1 > a1.1 && c2v.0 > c1.0 && c2v.1 > c1.1,
            "SA counters do not rise: {first:?} then {second:?}"
        );
        let again = smig(&["plan", "--detailed-exitcode", "examples/lab"]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "a second plan has nothing to do"
        );
    });
    let capture = lab("capture", &["stop", "--json"]);
    let back = move_back(dir.path());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    let leaks = json(&capture, "lab/capture stop --json");
    assert!(
        capture.status.success(),
        "guest traffic crossed the WAN in cleartext: {leaks}"
    );
    assert!(back.status.success(), "smig apply (back to hv2) failed");
    assert_initial("after moving back");
}
