//! The lab test: brings the lab up (lab/up), checks it with the independent checks (lab/check),
//! runs a bare live migration of `db` to the cloud host and back (lab/baseline) under a WAN
//! capture (lab/capture), and tears everything down (lab/down), asserting nothing is left.
//!
//! It needs root and a Debian machine (lab/up installs its packages). It never skips: without
//! root, or when the lab cannot come up, it fails with the reason.

mod lab_support;

use lab_support::{is_root, lab_lock};
use serde_json::Value;
use smig::discover::snapshot::Snapshot;
use smig::model::Observed;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const NAMESPACES: [&str; 5] = ["dc-hv1", "dc-hv2", "cloud-c1", "dc-core", "lab-wan"];
const LAB_RUN: &str = "/run/smig-lab";

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab")
}

/// Runs a lab command and returns its output; panics with everything it printed when `must`
/// is set and it fails.
fn lab(cmd: &str, args: &[&str], must: bool) -> Output {
    let started = Instant::now();
    let out = Command::new(lab_dir().join(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lab/{cmd}: {e}"));
    eprintln!(
        "lab/{cmd} {} -> {} in {:.1} s\n{}",
        args.join(" "),
        out.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    if must && !out.status.success() {
        panic!(
            "lab/{cmd} {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// Tears the lab down if the test ends early (a failed assertion), so a failure leaves no lab.
struct Teardown {
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.armed {
            lab("down", &[], false);
        }
    }
}

/// The pids of every process in the lab's network namespaces.
fn lab_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for ns in NAMESPACES {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

fn domains(check: &Value, host: &str) -> Vec<(String, String, bool)> {
    let doms = &check["hosts"][host]["domains"];
    assert!(
        doms.is_object(),
        "no domain list for {host}: {}",
        check["hosts"][host]
    );
    let mut v: Vec<_> = doms
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, d)| {
            (
                name.clone(),
                d["state"].as_str().unwrap_or("?").to_string(),
                d["persistent"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    v.sort();
    v
}

fn running(name: &str) -> (String, String, bool) {
    (name.to_string(), "running".to_string(), true)
}

/// Asserts the initial placement: web and batch1 on hv1, db and batch2 on hv2, nothing on c1,
/// every guest answering all its peers, no SA and no smig rule anywhere.
fn assert_initial_landscape(check: &Value) {
    assert_eq!(
        domains(check, "hv1"),
        vec![running("batch1"), running("web")]
    );
    assert_eq!(
        domains(check, "hv2"),
        vec![running("batch2"), running("db")]
    );
    assert_eq!(domains(check, "c1"), vec![]);
    for (guest, g) in check["guests"].as_object().expect("guests") {
        let peers = g["peers"].as_object().expect("peers");
        assert!(!peers.is_empty(), "{guest} has no peers");
        for (peer, p) in peers {
            assert_eq!(
                p["answers"],
                Value::Bool(true),
                "{guest} does not get answers from {peer}: {g}"
            );
        }
    }
    assert_eq!(check["all_answer"], Value::Bool(true));
    for host in ["hv1", "hv2", "c1"] {
        assert_eq!(
            check["hosts"][host]["sas"],
            serde_json::json!([]),
            "SAs on {host}"
        );
        assert_eq!(
            check["hosts"][host]["nft_smig"],
            serde_json::json!({}),
            "smig rules on {host}"
        );
    }
    assert_eq!(
        check["routing_core"]["sas"],
        serde_json::json!([]),
        "SAs on the routing core"
    );
    let routes = check["routing_core"]["routes"].as_array().expect("routes");
    for (dst, dev) in [
        ("192.168.10.0/24", "br-app"),
        ("192.168.20.0/24", "br-batch"),
    ] {
        assert!(
            routes.iter().any(|r| r["dst"] == dst && r["dev"] == dev),
            "routing core has no route {dst} dev {dev}: {routes:?}"
        );
    }
}

/// The recorded snapshot of the lab's initial state.
fn recorded_snapshot() -> Observed {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/lab/observed.json");
    Snapshot::new(&path)
        .read()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces the ephemeral ports of connections (they change with every boot) by 0, keeping
/// well-known service ports (below 1024).
fn without_ephemeral_ports(mut o: Observed) -> Observed {
    for conns in o.connections.values_mut() {
        for c in conns.iter_mut() {
            for a in [&mut c.local, &mut c.remote] {
                if a.port() >= 1024 {
                    a.set_port(0);
                }
            }
        }
    }
    o
}

#[test]
fn recorded_snapshot_is_the_initial_lab() {
    let o = recorded_snapshot();
    let placements: Vec<_> = ["web", "db", "batch1", "batch2"]
        .iter()
        .map(|d| {
            let at: Vec<_> = o.placements(d).map(|(h, _)| h.to_string()).collect();
            (d.to_string(), at)
        })
        .collect();
    assert_eq!(
        placements,
        vec![
            ("web".to_string(), vec!["dc.hv1".to_string()]),
            ("db".to_string(), vec!["dc.hv2".to_string()]),
            ("batch1".to_string(), vec!["dc.hv1".to_string()]),
            ("batch2".to_string(), vec!["dc.hv2".to_string()]),
        ]
    );
    assert!(o
        .hosts
        .values()
        .all(|h| h.block_rules.is_empty() && h.ipsec.is_empty() && h.tunnels.is_empty()));
    assert!(o
        .hosts
        .contains_key(&smig::model::HostId::new("cloud", "c1")));
    let routes = &o.routing_cores["dc"].routes;
    assert!(routes
        .iter()
        .any(|r| r.prefix.to_string() == "192.168.10.0/24" && !r.via_smig_tunnel));
    assert_eq!(
        o.connections["web"].len(),
        1,
        "web's long-lived connection to db"
    );
}

#[test]
fn lab_comes_up_migrates_bare_and_leaves_nothing_behind() {
    assert!(
        is_root(),
        "the lab test needs root (it creates namespaces and runs libvirtd); run `sudo cargo test --test lab`"
    );
    let _lock = lab_lock();
    let mut teardown = Teardown { armed: true };
    let t0 = Instant::now();

    // A clean slate, then up, then up again (idempotent: nothing to create).
    lab("down", &[], true);
    let pki_before = Path::new("/etc/pki").exists();
    let t_up = Instant::now();
    lab("up", &[], true);
    let up_secs = t_up.elapsed().as_secs_f64();
    let again = lab("up", &[], true);
    let again_log = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again_log.contains("created")
            && !again_log.contains("started")
            && !again_log.contains("defined"),
        "a second lab/up changed things:\n{again_log}"
    );

    let check = json(
        &lab("check", &["--json", "--wait", "60"], true),
        "lab/check",
    );
    assert_initial_landscape(&check);

    // What discovery should see equals the recorded snapshot (up to ephemeral ports).
    let live = lab("snapshot", &[], true);
    let live = Snapshot::parse(&String::from_utf8_lossy(&live.stdout), "lab/snapshot")
        .unwrap_or_else(|e| panic!("lab/snapshot: {e}"));
    assert_eq!(
        without_ephemeral_ports(live),
        without_ephemeral_ports(recorded_snapshot()),
        "the live lab differs from testdata/lab/observed.json"
    );

    // The capture must be able to fail: guest-subnet traffic sent across the WAN is reported.
    lab("capture", &["start"], true);
    Command::new("ip")
        .args([
            "netns", "exec", "dc-core", "ping", "-c", "2", "-i", "0.2", "-W", "1",
        ])
        .args(["-I", "192.168.10.1", "10.78.0.21"])
        .output()
        .expect("ping");
    let leaked = lab("capture", &["stop", "--json"], false);
    assert!(!leaked.status.success(), "the WAN capture missed a leak");
    let leaked = json(&leaked, "lab/capture stop");
    assert!(
        leaked["guest_cleartext"].as_u64().unwrap_or(0) > 0,
        "{leaked}"
    );

    // A bare live migration hv2 -> c1 -> hv2 under the WAN capture.
    lab("capture", &["start"], true);
    let baseline = json(&lab("baseline", &["--json"], true), "lab/baseline");
    let capture = lab("capture", &["stop", "--json"], false);
    let capture = json(&capture, "lab/capture stop");
    let legs = baseline["legs"].as_array().expect("legs");
    assert_eq!(legs.len(), 2, "{baseline}");
    assert_eq!(
        (legs[0]["from"].as_str(), legs[0]["to"].as_str()),
        (Some("hv2"), Some("c1"))
    );
    assert_eq!(
        (legs[1]["from"].as_str(), legs[1]["to"].as_str()),
        (Some("c1"), Some("hv2"))
    );
    for leg in legs {
        let wall = leg["wall_ms"].as_u64().expect("wall_ms");
        assert!(wall > 0 && wall < 60_000, "{leg}");
        assert!(leg["libvirt_downtime_ms"].as_u64().is_some(), "{leg}");
        // Traffic resumed: web saw db answer again within seconds, not after the whole leg.
        let web_sees_db = leg["blackout_s"]["web_sees_db"].as_f64().expect("blackout");
        assert!(web_sees_db > 0.0 && web_sees_db < 10.0, "{leg}");
    }
    eprintln!("baseline: {baseline}");
    eprintln!("WAN capture during the baseline: {capture}");
    assert_eq!(capture["leaked"], Value::Bool(false), "{capture}");
    assert!(
        capture["esp"].as_u64().unwrap_or(0) > 0,
        "no ESP on the WAN: {capture}"
    );
    assert!(
        capture["libvirt_tls"].as_u64().unwrap_or(0) > 0,
        "{capture}"
    );

    // Back where it started, and still talking.
    let check = json(
        &lab("check", &["--json", "--wait", "30"], true),
        "lab/check",
    );
    assert_initial_landscape(&check);
    let echo = &check["guests"]["web"]["tcp_echo"];
    assert!(echo["echoes"].as_u64().unwrap_or(0) > 0, "{echo}");

    // Down, and nothing left.
    let pids = lab_pids();
    assert!(!pids.is_empty(), "no processes in the lab's namespaces");
    lab("down", &[], true);
    teardown.armed = false;
    for ns in NAMESPACES {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
    let alive: Vec<_> = pids
        .iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(alive.is_empty(), "lab processes left behind: {alive:?}");
    assert!(!Path::new(LAB_RUN).exists(), "{LAB_RUN} left behind");
    let link = Command::new("ip")
        .args(["link", "show", "smiglab0"])
        .output()
        .expect("ip link");
    assert!(!link.status.success(), "link smiglab0 left behind");
    assert_eq!(
        Path::new("/etc/pki").exists(),
        pki_before,
        "lab/down did not restore /etc/pki"
    );
    eprintln!(
        "lab test: up in {up_secs:.1} s, total {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
