//! End to end on the lab (lab/README.md): a whole-subnet move through the `smig` binary and the
//! real drivers, with `examples/lab-subnet` (batch1 and batch2, all of subnet batch, to
//! cloud.c1; db stays on dc.hv2).
//! - The route arrives: under a WAN capture `smig apply` adds the subnet tunnel from the dc
//!   routing core to c1 (a VXLAN carried by an IPsec SA of its own), moves both guests, and
//!   `route.check` waits; the test adds a route for 192.168.20.0/24 on the routing core a
//!   while after the tunnel appeared (standing in for a routing protocol). While the tunnel is
//!   up the guests on c1 reach their gateway on the routing core through it and the SA is
//!   installed; afterwards the tunnel and its SA are gone, both guests run on c1 and answer
//!   each other, nothing crossed the WAN in cleartext, and a second plan has nothing to do.
//!   Then both move back.
//! - The route never comes: with a short route-check timeout the apply fails and rolls back to
//!   the initial lab, with nothing of smig's left.
//!
//! Each test needs root, holds the lab lock (/run/lock/smig-lab.lock) for its whole run, brings
//! the lab up with `lab/up`, and leaves it as it found it. It never skips: when it cannot run,
//! it fails with the reason.

mod lab_support;

use lab_support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PSK: &str = "e2e-lab-subnet-psk-7c2e";
const CORE_NS: &str = "dc-core";
/// The route a routing protocol would install once the subnet lives in the cloud.
const LEARNED: [&str; 5] = ["192.168.20.0/24", "via", "10.77.254.1", "metric", "100"];
/// How long after the tunnel appears the test adds the route.
const ROUTE_DELAY: Duration = Duration::from_secs(10);
const TUNNEL_CONN: &str = "smig-tunnel.batch.dc.cloud.c1";

/// Runs the smig binary with the lab's driver settings.
fn smig(args: &[&str]) -> Output {
    lab_support::smig(PSK, args)
}

fn answers(check: &Value, guest: &str, peer: &str) -> bool {
    check["guests"][guest]["peers"][peer]["answers"] == Value::Bool(true)
}

/// The SAs `lab/check` lists for a host (`hv1`, `hv2`, `c1`) or the routing core (`core`).
fn sas<'a>(check: &'a Value, host: &str) -> &'a [Value] {
    let v = if host == "core" {
        &check["routing_core"]["sas"]
    } else {
        &check["hosts"][host]["sas"]
    };
    v.as_array().map(Vec::as_slice).unwrap_or_else(|| {
        panic!("lab/check has no SA list for {host} (charon down?): {v}");
    })
}

/// The tunnel's installed CHILD_SA on `host`: (packets in, packets out).
fn tunnel_sa(check: &Value, host: &str) -> Option<(u64, u64)> {
    sas(check, host)
        .iter()
        .filter(|s| s["name"] == TUNNEL_CONN)
        .flat_map(|s| s["children"].as_array().cloned().unwrap_or_default())
        .find(|c| c["state"] == "INSTALLED")
        .map(|c| {
            (
                c["packets_in"].as_u64().unwrap_or(0),
                c["packets_out"].as_u64().unwrap_or(0),
            )
        })
}

fn smig_links(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("smx-"))
        .map(str::to_string)
        .collect()
}

/// Fails when smig left anything in the lab: an SA (on any host or the routing core), a
/// table `smig`, a smig link.
fn assert_nothing_of_smig(c: &Value, what: &str) {
    for h in ["hv1", "hv2", "c1", "core"] {
        assert!(
            sas(c, h).is_empty(),
            "{what}: SAs left on {h}: {:?}",
            sas(c, h)
        );
    }
    for h in ["hv1", "hv2", "c1"] {
        let nft = &c["hosts"][h]["nft_smig"];
        assert!(
            nft.as_object().is_none_or(|m| m.is_empty()),
            "{what}: table smig left on {h}: {nft}"
        );
    }
    let nft = &c["routing_core"]["nft_smig"];
    assert!(
        nft.as_object().is_none_or(|m| m.is_empty()),
        "{what}: table smig left on the routing core: {nft}"
    );
    for ns in NAMESPACES {
        let links = smig_links(ns);
        assert!(
            links.is_empty(),
            "{what}: smig links left in {ns}: {links:?}"
        );
    }
}

/// Fails unless the lab is in its initial placement with nothing of smig's on it.
fn assert_initial(what: &str) {
    let c = check(60);
    for (guest, host) in [
        ("web", "hv1"),
        ("db", "hv2"),
        ("batch1", "hv1"),
        ("batch2", "hv2"),
    ] {
        assert!(
            domains_on(&c, host).contains(&guest.to_string()),
            "{what}: {guest} is not on {host} ({host} has {:?}, c1 {:?}); the lab is not in its initial state: `lab/down && lab/up` resets it",
            domains_on(&c, host),
            domains_on(&c, "c1")
        );
    }
    assert!(
        domains_on(&c, "c1").is_empty(),
        "{what}: c1 runs {:?}",
        domains_on(&c, "c1")
    );
    assert_eq!(
        c["all_answer"],
        Value::Bool(true),
        "{what}: guests do not all answer their peers"
    );
    assert_nothing_of_smig(&c, what);
    must(
        lab("snapshot", &[]),
        &format!("{what}: lab/snapshot (no smig-owned state)"),
    );
}

fn core_route(op: &str) -> Output {
    let mut args = vec!["-n", CORE_NS, "route", op];
    args.extend(LEARNED);
    Command::new("ip").args(&args).output().expect("ip route")
}

fn has_learned_route() -> bool {
    let out = Command::new("ip")
        .args(["-n", CORE_NS, "route", "show", "192.168.20.0/24"])
        .output()
        .expect("ip route show");
    String::from_utf8_lossy(&out.stdout).contains("via 10.77.254.1")
}

/// Removes the stand-in route if it is there (a run that died half-way may have left it).
fn remove_learned_route() {
    if has_learned_route() {
        let out = core_route("del");
        assert!(
            out.status.success(),
            "removing the learned route from the routing core: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A copy of `examples/lab-subnet` in `dir/NAME`, changed by `edit`.
fn config_copy(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/lab-subnet/main.smig.hcl"))
        .expect("examples/lab-subnet/main.smig.hcl");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("config dir");
    std::fs::write(out.join("main.smig.hcl"), edit(text)).expect("write config");
    out
}

/// Replaces the host of `vm` in a configuration text.
fn with_host(text: &str, vm: &str, host: &str) -> String {
    let marker = format!("vm \"{vm}\" {{");
    let (head, tail) = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("vm {vm} in examples/lab-subnet"));
    let (line, rest) = tail
        .split_once("host    = ")
        .and_then(|(a, b)| b.split_once('\n').map(|(_, r)| (a, r)))
        .unwrap_or_else(|| panic!("host of vm {vm}"));
    format!("{head}{marker}{line}host    = {host}\n{rest}")
}

/// Moves batch1 back to dc.hv1 and batch2 back to dc.hv2 with a copy of the configuration
/// that says so (a no-op when they are there).
fn move_back(dir: &Path) -> Output {
    let back = config_copy(dir, "back", |t| {
        let t = with_host(&t, "batch1", "environment.dc.host.hv1");
        with_host(&t, "batch2", "environment.dc.host.hv2")
    });
    let state = dir.join("state-back");
    // One step at a time: two cleanups on cloud.c1 race on its nftables table when they run
    // at once (netns driver).
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

/// A running `smig apply --json` and the events it printed, each with when it arrived.
struct Apply {
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
    started: Instant,
}

impl Apply {
    fn start(config: &Path, state: &Path) -> Apply {
        let args = [
            "apply",
            "--auto-approve",
            "--json",
            "--parallelism",
            "1",
            "--state",
            state.to_str().expect("utf-8 path"),
            config.to_str().expect("utf-8 path"),
        ];
        eprintln!("starting smig {}", args.join(" "));
        let started = Instant::now();
        let mut child = smig_command(PSK, &args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start smig apply");
        let stdout = child.stdout.take().expect("smig stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("event: {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send((Instant::now(), v)).is_err() {
                        break;
                    }
                }
            }
        });
        Apply {
            child,
            events,
            seen: Vec::new(),
            started,
        }
    }

    /// Waits (at most `limit`) for an event `kind` of a step whose key starts with `step`.
    fn wait_for(&mut self, kind: &str, step: &str, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        if let Some(t) = self.find(kind, step) {
            return Some(t);
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    let hit = e.1["event"] == kind
                        && e.1["key"].as_str().is_some_and(|k| k.starts_with(step));
                    self.seen.push(e);
                    if hit {
                        return self.find(kind, step);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    fn find(&self, kind: &str, step: &str) -> Option<Instant> {
        self.seen
            .iter()
            .find(|(_, e)| {
                e["event"] == kind && e["key"].as_str().is_some_and(|k| k.starts_with(step))
            })
            .map(|(t, _)| *t)
    }

    fn event(&self, kind: &str, step: &str) -> Option<&Value> {
        self.seen
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["event"] == kind && e["key"].as_str().is_some_and(|k| k.starts_with(step)))
    }

    /// Waits for the apply to end (killing it after `limit`); its exit status and wall time.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, Duration, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for smig") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let s = self.child.wait().expect("wait for killed smig");
                eprintln!("smig apply killed after {limit:?}");
                break s;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let wall = self.started.elapsed();
        while let Ok(e) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(e);
        }
        eprintln!("smig apply -> {status} in {:.1} s", wall.as_secs_f64());
        (
            status,
            wall,
            self.seen.into_iter().map(|(_, e)| e).collect(),
        )
    }
}

/// Whether `ip -n dc-core link` shows smig's tunnel link.
fn tunnel_link_up() -> bool {
    !smig_links(CORE_NS).is_empty()
}

fn start_with_a_clean_lab() -> std::fs::File {
    let lock = lab_ready("cargo test --test e2e_lab_subnet");
    remove_learned_route();
    assert_initial("before");
    lock
}

#[test]
fn e2e_whole_subnet_moves_behind_a_tunnel_until_the_route_is_learned() {
    let _lock = start_with_a_clean_lab();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let config = root().join("examples/lab-subnet");

    must(lab("capture", &["start"]), "lab/capture start");
    let result = std::panic::catch_unwind(|| {
        let mut apply = Apply::start(&config, &state);
        // The tunnel: the apply says so, and the routing core shows the link.
        let tunnel_done = apply.wait_for("step_done", "tunnel.add:", Duration::from_secs(240));
        let Some(tunnel_at) = tunnel_done else {
            let (status, _, _) = apply.finish(Duration::from_secs(240));
            panic!("tunnel.add never completed (smig apply {status})");
        };
        assert!(
            tunnel_link_up(),
            "no smig link in {CORE_NS} after tunnel.add"
        );

        // While the tunnel is up: the guests on c1 reach their gateway (on the routing core)
        // through it, and its SA is installed on both ends. (At most 30 s: route.check gives
        // up after 60.)
        let during = check(30);
        for vm in ["batch1", "batch2"] {
            assert!(
                domains_on(&during, "c1").contains(&vm.to_string()),
                "{vm} is not on c1 while the tunnel is up"
            );
        }
        assert_eq!(
            during["all_answer"],
            Value::Bool(true),
            "with the tunnel up, every guest answers its peers (batch1 and batch2 on c1 reach 192.168.20.1)"
        );
        let (core_sa, c1_sa) = (tunnel_sa(&during, "core"), tunnel_sa(&during, "c1"));
        let (Some(core_sa), Some(c1_sa)) = (core_sa, c1_sa) else {
            panic!(
                "no installed SA {TUNNEL_CONN} on the routing core and c1: {core_sa:?} {c1_sa:?}"
            );
        };
        assert!(
            core_sa.0 > 0 && core_sa.1 > 0 && c1_sa.0 > 0 && c1_sa.1 > 0,
            "the tunnel's SA carries nothing: core {core_sa:?}, c1 {c1_sa:?}"
        );
        assert!(tunnel_link_up(), "the tunnel went before the route came");
        assert!(
            apply.find("step_done", "route.check:").is_none(),
            "route.check passed before the routing core learned a route"
        );

        // The routing protocol's route, a while after the tunnel appeared.
        if let Some(left) = ROUTE_DELAY.checked_sub(tunnel_at.elapsed()) {
            std::thread::sleep(left);
        }
        let out = core_route("add");
        assert!(
            out.status.success(),
            "adding the route on the routing core: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let route_at = Instant::now();
        eprintln!(
            "route added {:.1} s after the tunnel",
            route_at.duration_since(tunnel_at).as_secs_f64()
        );
        let checked = apply.wait_for("step_done", "route.check:", Duration::from_secs(120));
        let route_check = apply.event("step_done", "route.check:").cloned();
        let (status, wall, _) = apply.finish(Duration::from_secs(240));
        assert!(
            status.success(),
            "smig apply examples/lab-subnet failed ({status})"
        );
        let (Some(checked), Some(route_check)) = (checked, route_check) else {
            panic!("route.check never completed");
        };
        assert!(
            checked >= route_at,
            "route.check completed before the route was added"
        );
        let waited_ms = route_check["duration_ms"].as_u64().unwrap_or(0);
        eprintln!(
            "smig apply took {:.1} s; route.check waited {waited_ms} ms; the route came {:.1} s after tunnel.add",
            wall.as_secs_f64(),
            route_at.duration_since(tunnel_at).as_secs_f64()
        );
        assert!(
            waited_ms >= ROUTE_DELAY.as_millis() as u64 - 2000,
            "route.check waited only {waited_ms} ms, less than the route's delay"
        );

        // Afterwards: both guests on c1, answering each other; no tunnel, no SA.
        let deadline = Instant::now() + Duration::from_secs(60);
        let after = loop {
            let c = check(0);
            let ok =
                answers(&c, "batch1", "192.168.20.12") && answers(&c, "batch2", "192.168.20.11");
            if ok || Instant::now() >= deadline {
                break c;
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        let on_c1 = domains_on(&after, "c1");
        assert!(
            on_c1.contains(&"batch1".to_string()) && on_c1.contains(&"batch2".to_string()),
            "batch1 and batch2 are not both on c1: {on_c1:?}"
        );
        assert!(
            !domains_on(&after, "hv1").contains(&"batch1".to_string()),
            "batch1 left on hv1"
        );
        assert!(
            !domains_on(&after, "hv2").contains(&"batch2".to_string()),
            "batch2 left on hv2"
        );
        assert!(
            answers(&after, "batch1", "192.168.20.12")
                && answers(&after, "batch2", "192.168.20.11"),
            "batch1 and batch2 do not answer each other on c1"
        );
        assert!(
            answers(&after, "web", "192.168.10.12") && answers(&after, "db", "192.168.10.11"),
            "web and db (not moved) lost each other"
        );
        assert!(
            !tunnel_link_up(),
            "the tunnel link is left on the routing core"
        );
        for h in ["core", "c1"] {
            assert!(
                sas(&after, h).is_empty(),
                "SAs left on {h} after the tunnel went: {:?}",
                sas(&after, h)
            );
        }
        assert!(
            smig_links("cloud-c1").is_empty(),
            "the tunnel link is left on c1"
        );
        let again = smig(&["plan", "--detailed-exitcode", "examples/lab-subnet"]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "a second plan has nothing to do"
        );
    });
    let capture = lab("capture", &["stop", "--json"]);
    remove_learned_route();
    let back = move_back(dir.path());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    let leaks = json(&capture, "lab/capture stop --json");
    assert!(
        capture.status.success(),
        "guest traffic crossed the WAN in cleartext: {leaks}"
    );
    assert!(
        leaks["esp"].as_u64().unwrap_or(0) > 0,
        "no ESP on the WAN: the tunnel carried nothing: {leaks}"
    );
    assert!(
        back.status.success(),
        "smig apply (batch back to hv1, hv2) failed"
    );
    assert_initial("after moving back");
}

#[test]
fn e2e_whole_subnet_move_rolls_back_when_the_route_never_comes() {
    let _lock = start_with_a_clean_lab();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let config = config_copy(dir.path(), "short", |t| {
        let t = t.replace(
            "route_check_timeout_s  = 60 ",
            "route_check_timeout_s  = 15 ",
        );
        assert!(
            t.contains("route_check_timeout_s  = 15 "),
            "timeout in examples/lab-subnet"
        );
        t
    });

    must(lab("capture", &["start"]), "lab/capture start");
    let result = std::panic::catch_unwind(|| {
        let mut apply = Apply::start(&config, &state);
        let tunnel = apply.wait_for("step_done", "tunnel.add:", Duration::from_secs(240));
        assert!(tunnel.is_some(), "tunnel.add never completed");
        let failed = apply.wait_for("step_failed", "route.check:", Duration::from_secs(120));
        let (status, wall, events) = apply.finish(Duration::from_secs(300));
        eprintln!("smig apply (no route) took {:.1} s", wall.as_secs_f64());
        assert!(failed.is_some(), "route.check did not fail without a route");
        assert!(
            !status.success(),
            "smig apply succeeded although no route came"
        );
        assert!(
            events.iter().any(|e| e["event"] == "rollback_done"),
            "no rollback reported"
        );
        let stopped = events
            .iter()
            .find(|e| e["event"] == "rollback_done")
            .map(|e| e["stopped_at"].clone());
        assert_eq!(stopped, Some(Value::Null), "rollback stopped early");
        assert!(!has_learned_route(), "a route appeared from nowhere");
    });
    let capture = lab("capture", &["stop", "--json"]);
    // Rolled back: batch1 on hv1, batch2 on hv2, every guest answering all its peers, no
    // tunnel, no SA, nothing of smig's.
    let verdict =
        result.and_then(|()| std::panic::catch_unwind(|| assert_initial("after the rollback")));
    if let Err(p) = verdict {
        // Put the guests back whatever happened, so the lab is left as found.
        let back = move_back(dir.path());
        eprintln!("moving batch back after the failure: {}", back.status);
        std::panic::resume_unwind(p);
    }
    let leaks = json(&capture, "lab/capture stop --json");
    assert!(
        capture.status.success(),
        "guest traffic crossed the WAN in cleartext: {leaks}"
    );
}
