//! The libvirt driver on the lab's real hosts (libvirtd over TLS in the lab's namespaces):
//! discovery of hv1, hv2 and c1; a live TLS migration of `db` hv2 -> c1 arriving paused, with
//! progress, then resumed, and back; the NIC link and pause/resume on a real guest; an aborted
//! migration that leaves `db` on hv2; an unreachable host. `lab/check --json` (virsh, not smig)
//! confirms placement after each step, and web <-> db traffic once `db` is home.
//!
//! Needs root and the lab (`lab/up`, run here under the lab lock). It never skips: without root
//! or when the lab cannot come up it fails with the reason. It leaves the lab as it found it
//! (guests on their initial hosts); a failure midway brings `db` home with virsh.

mod lab_support;

use lab_support::{is_root, lab_lock};
use serde_json::Value;
use smig::drivers::libvirt::{Libvirt, LibvirtHost, LibvirtOptions};
use smig::drivers::{AbortSignal, DriverError, Hypervisor, MigrationProgress, MigrationRequest};
use smig::model::{DomainState, HostId, MigrationMode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_PKI: &str = "/run/smig-lab/pki/client";
const HOSTS: [(&str, &str, &str); 3] = [
    ("hv1", "dc.hv1", "10.77.0.11"),
    ("hv2", "dc.hv2", "10.77.0.12"),
    ("c1", "cloud.c1", "10.78.0.21"),
];

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab")
}

fn lab(cmd: &str, args: &[&str], must: bool) -> Output {
    let out = Command::new(lab_dir().join(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lab/{cmd}: {e}"));
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

/// `lab/check --json` (its exit status says whether every guest answers; not required here).
fn check(wait: Option<u32>) -> Value {
    let w = wait.map(|w| w.to_string());
    let mut args = vec!["--json"];
    if let Some(w) = &w {
        args.extend(["--wait", w.as_str()]);
    }
    let out = lab("check", &args, false);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab/check: not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Where `lab/check` sees a domain: (lab host name, state).
fn placement(check: &Value, domain: &str) -> Vec<(String, String)> {
    let mut at = Vec::new();
    for (short, _, _) in HOSTS {
        let doms = &check["hosts"][short]["domains"];
        assert!(doms.is_object(), "no domain list for {short}: {check}");
        if let Some(d) = doms.get(domain) {
            at.push((
                short.to_string(),
                d["state"].as_str().unwrap_or("?").to_string(),
            ));
        }
    }
    at
}

fn at(host: &str, state: &str) -> Vec<(String, String)> {
    vec![(host.to_string(), state.to_string())]
}

fn uri(addr: &str) -> String {
    format!("qemu+tls://{addr}/system")
}

fn id(short: &str) -> HostId {
    let (_, full, _) = HOSTS
        .iter()
        .find(|(s, _, _)| *s == short)
        .expect("lab host");
    HostId((*full).into())
}

fn addr(short: &str) -> &'static str {
    HOSTS
        .iter()
        .find(|(s, _, _)| *s == short)
        .expect("lab host")
        .2
}

/// Brings `db` back to hv2, running, with virsh, if a failure left it elsewhere.
struct DbHome;

impl Drop for DbHome {
    fn drop(&mut self) {
        let virsh = |h: &str, args: &[&str]| {
            Command::new("virsh")
                .arg("-c")
                .arg(format!("{}?pkipath={CLIENT_PKI}", uri(addr(h))))
                .args(args)
                .output()
        };
        let state = |h: &str| {
            virsh(h, &["domstate", "db"])
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        if let Some(s) = state("c1") {
            eprintln!("cleanup: db is {s} on c1, migrating it back to hv2");
            if s.starts_with("paused") {
                let _ = virsh("c1", &["resume", "db"]);
            }
            let _ = virsh(
                "c1",
                &[
                    "migrate",
                    "--live",
                    "--persistent",
                    "--undefinesource",
                    "--tls",
                    "db",
                    &uri(addr("hv2")),
                ],
            );
        }
        match state("hv2").as_deref() {
            Some(s) if s.starts_with("paused") => {
                let _ = virsh("hv2", &["resume", "db"]);
            }
            Some(s) if s.starts_with("shut off") => {
                let _ = virsh("hv2", &["start", "db"]);
            }
            _ => {}
        }
        let _ = virsh("hv2", &["domif-setlink", "db", "52:54:00:0a:00:0c", "up"]);
    }
}

fn driver(peer_to_peer: bool) -> Libvirt {
    let hosts = HOSTS
        .iter()
        .map(|(_, full, a)| {
            (
                HostId((*full).into()),
                LibvirtHost {
                    uri: uri(a),
                    pki_path: Some(CLIENT_PKI.into()),
                    timeout: Duration::from_secs(10),
                },
            )
        })
        .collect();
    Libvirt::new(
        hosts,
        LibvirtOptions {
            shutdown_grace: Duration::ZERO,
            peer_to_peer,
            ..LibvirtOptions::default()
        },
    )
}

fn request(from: &str, to: &str) -> MigrationRequest {
    MigrationRequest {
        domain: "db".into(),
        from: id(from),
        to: id(to),
        to_uri: uri(addr(to)),
        mode: MigrationMode::Live,
        tls: true,
        paused: false,
        max_downtime_ms: Some(300),
        bandwidth_mibps: None,
    }
}

type Seen = Arc<Mutex<Vec<(Duration, MigrationProgress)>>>;

fn recorder() -> (smig::drivers::ProgressSink, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let t0 = Instant::now();
    (
        Arc::new(move |p| {
            if let Ok(mut v) = s.lock() {
                v.push((t0.elapsed(), p));
            }
        }),
        seen,
    )
}

fn reports(seen: &Seen) -> Vec<(Duration, MigrationProgress)> {
    seen.lock().map(|v| v.clone()).unwrap_or_default()
}

async fn state(d: &Libvirt, host: &str) -> Option<DomainState> {
    d.domain(&id(host), "db")
        .await
        .unwrap_or_else(|e| panic!("db on {host}: {e}"))
        .map(|d| d.state)
}

/// One live leg through the driver; returns its wall time.
async fn leg(d: &Libvirt, req: &MigrationRequest) -> Duration {
    let (sink, seen) = recorder();
    let t0 = Instant::now();
    d.migrate(req, sink, AbortSignal::never())
        .await
        .unwrap_or_else(|e| panic!("migrating db {} -> {}: {e}", req.from, req.to));
    let wall = t0.elapsed();
    let seen = reports(&seen);
    let job = d
        .completed_job(&req.to, "db")
        .await
        .unwrap_or_else(|e| panic!("completed job: {e}"));
    eprintln!(
        "driver leg {} -> {} (paused arrival: {}): wall {} ms, {} progress reports, libvirt {:?}",
        req.from,
        req.to,
        req.paused,
        wall.as_millis(),
        seen.len(),
        job
    );
    for (t, p) in &seen {
        eprintln!(
            "  {:>6} ms  {:>3}%  {}/{} bytes",
            t.as_millis(),
            p.percent(),
            p.data_processed,
            p.data_total
        );
    }
    assert!(
        seen.iter()
            .any(|(_, p)| p.data_total > 0 && p.data_processed < p.data_total),
        "no progress report during the migration: {seen:?}"
    );
    assert_eq!(seen.last().map(|(_, p)| p.percent()), Some(100));
    wall
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_driver_on_the_lab() {
    assert!(
        is_root(),
        "the libvirt lab test needs root (the lab's libvirtd runs in root's namespaces); run it as root"
    );
    let _lock = lab_lock();
    lab("up", &[], true);
    let before = check(Some(60));
    assert_eq!(
        placement(&before, "db"),
        at("hv2", "running"),
        "db must start on hv2: run lab/down && lab/up"
    );
    let _home = DbHome;
    let d = driver(true);

    // Discovery: every host at once.
    let t0 = Instant::now();
    let all = d.inspect_all().await;
    let discovery = t0.elapsed();
    eprintln!("discovery of 3 hosts: {} ms", discovery.as_millis());
    let names = |h: &str| -> Vec<String> {
        all[&id(h)]
            .as_ref()
            .unwrap_or_else(|e| panic!("discovering {h}: {e}"))
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(names("hv1"), ["batch1", "web"]);
    assert_eq!(names("hv2"), ["batch2", "db"]);
    assert!(names("c1").is_empty(), "{:?}", names("c1"));
    for (h, dom, bridge, mac) in [
        ("hv1", "web", "br-app", "52:54:00:0a:00:0b"),
        ("hv1", "batch1", "br-batch", "52:54:00:14:00:0b"),
        ("hv2", "db", "br-app", "52:54:00:0a:00:0c"),
        ("hv2", "batch2", "br-batch", "52:54:00:14:00:0c"),
    ] {
        let detail = &all[&id(h)].as_ref().expect("host")[dom];
        assert_eq!(detail.domain.state, DomainState::Running, "{dom}");
        assert!(detail.domain.persistent, "{dom}");
        assert_eq!(detail.domain.nic_link_up, Some(true), "{dom}");
        assert_eq!(detail.nics.len(), 1, "{dom}");
        assert_eq!(detail.nics[0].source.as_deref(), Some(bridge), "{dom}");
        assert_eq!(detail.nics[0].mac.as_deref(), Some(mac), "{dom}");
        assert_eq!(detail.job, None, "{dom}");
    }

    // Live, TLS, arriving paused, with progress; then resumed.
    let mut out = request("hv2", "c1");
    out.paused = true;
    let wall_out = leg(&d, &out).await;
    assert_eq!(state(&d, "hv2").await, None);
    assert_eq!(state(&d, "c1").await, Some(DomainState::Paused));
    assert_eq!(placement(&check(None), "db"), at("c1", "paused"));
    let t0 = Instant::now();
    d.resume(&id("c1"), "db").await.expect("resume on c1");
    eprintln!("resume on c1: {} ms", t0.elapsed().as_millis());
    assert_eq!(placement(&check(None), "db"), at("c1", "running"));
    let persistent = d
        .domain(&id("c1"), "db")
        .await
        .expect("db on c1")
        .expect("db on c1");
    assert!(persistent.persistent, "db is not persistent on c1");

    // Back home, running on arrival, with this process holding both connections (not p2p).
    let direct = driver(false);
    let wall_back = leg(&direct, &request("c1", "hv2")).await;
    assert_eq!(state(&d, "c1").await, None);
    assert_eq!(state(&d, "hv2").await, Some(DomainState::Running));
    let home = check(Some(60));
    assert_eq!(placement(&home, "db"), at("hv2", "running"));
    assert_eq!(
        home["all_answer"],
        Value::Bool(true),
        "web <-> db traffic did not resume: {}",
        home["guests"]
    );
    eprintln!(
        "driver migration wall time: hv2 -> c1 {} ms (peer to peer), c1 -> hv2 {} ms (direct)",
        wall_out.as_millis(),
        wall_back.as_millis()
    );

    // The NIC link on a real guest: down cuts db off from its peers, up restores it.
    let hv2 = id("hv2");
    d.set_link(&hv2, "db", false).await.expect("link down");
    let down = d.domain(&hv2, "db").await.expect("db").expect("db");
    assert_eq!(down.nic_link_up, Some(false));
    d.set_link(&hv2, "db", false)
        .await
        .expect("link down again");
    d.set_link(&hv2, "db", true).await.expect("link up");
    let up = d.domain(&hv2, "db").await.expect("db").expect("db");
    assert_eq!(up.nic_link_up, Some(true));
    d.pause(&hv2, "db").await.expect("pause");
    assert_eq!(state(&d, "hv2").await, Some(DomainState::Paused));
    d.resume(&hv2, "db").await.expect("resume");
    assert_eq!(state(&d, "hv2").await, Some(DomainState::Running));

    // An aborted migration: capped at 1 MiB/s it would take a minute; the abort stops it and
    // db keeps running on hv2.
    let mut slow = request("hv2", "c1");
    slow.bandwidth_mibps = Some(1);
    let (handle, signal) = AbortSignal::new();
    let (sink, seen) = recorder();
    let job = {
        let d = d.clone();
        let slow = slow.clone();
        tokio::spawn(async move { d.migrate(&slow, sink, signal).await })
    };
    let t0 = Instant::now();
    while reports(&seen).is_empty() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !reports(&seen).is_empty(),
        "no progress from the slow migration"
    );
    let info = d.job_info(&hv2, "db").await.expect("job info");
    assert!(
        info.is_some_and(|p| p.data_total > 0),
        "no job in progress on hv2: {info:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_abort = Instant::now();
    handle.abort();
    let result = tokio::time::timeout(Duration::from_secs(30), job)
        .await
        .expect("the aborted migration did not return within 30 s")
        .expect("migration task");
    eprintln!(
        "abort: returned {} ms after the abort, {} progress reports before",
        t_abort.elapsed().as_millis(),
        reports(&seen).len()
    );
    assert!(
        matches!(result, Err(DriverError::Aborted { .. })),
        "{result:?}"
    );
    assert_eq!(state(&d, "hv2").await, Some(DomainState::Running));
    assert_eq!(state(&d, "c1").await, None);
    assert_eq!(d.job_info(&hv2, "db").await.expect("job info"), None);
    assert_eq!(placement(&check(None), "db"), at("hv2", "running"));

    // An unreachable host: a closed port, named, within its timeout.
    let dead = HostId("cloud.c9".into());
    let unreachable = Libvirt::new(
        BTreeMap::from([(
            dead.clone(),
            LibvirtHost {
                uri: "qemu+tls://10.77.0.11:1/system".into(),
                pki_path: Some(CLIENT_PKI.into()),
                timeout: Duration::from_secs(3),
            },
        )]),
        LibvirtOptions::default(),
    );
    let t0 = Instant::now();
    let e = unreachable.domains(&dead).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    match &e {
        DriverError::Unreachable { target, .. } => assert_eq!(target, "cloud.c9"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    eprintln!("unreachable: {e} ({} ms)", t0.elapsed().as_millis());

    // The bare virsh baseline in the same run, for comparison (it leaves db on hv2).
    let baseline = lab("baseline", &["--json"], true);
    eprintln!(
        "lab/baseline: {}",
        String::from_utf8_lossy(&baseline.stdout)
    );

    // As found: every guest home and answering its peers.
    let last = check(Some(60));
    for (dom, host) in [
        ("web", "hv1"),
        ("batch1", "hv1"),
        ("db", "hv2"),
        ("batch2", "hv2"),
    ] {
        assert_eq!(placement(&last, dom), at(host, "running"), "{dom}");
    }
    assert_eq!(
        last["all_answer"],
        Value::Bool(true),
        "guests do not all answer: {}",
        last["guests"]
    );
    assert!(
        last["guests"]["web"]["tcp_echo"]["since_last_s"]
            .as_f64()
            .is_some_and(|s| s < 5.0),
        "web's echo connection to db is stale: {}",
        last["guests"]["web"]
    );
}
