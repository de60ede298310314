//! The host network driver (`netns:NAME`) on the lab: block / unblock db's traffic with web on
//! hv2 and watch the guests' probes stop and resume; discovery reads the rules back; the
//! routing core's routes; db's connections (web's long-lived TCP connection to db:7) and their
//! reset, after which web reconnects; the subnet tunnel from the routing core to c1 added and
//! removed; every call twice. Root and the lab are required (it fails, never skips); it holds
//! the lab lock for its whole run and leaves the lab as it found it.

mod lab_support;

use lab_support::{is_root, lab_lock};
use serde_json::Value;
use smig::drivers::netns::NetnsHostNetwork;
use smig::drivers::{HostNetwork, RoutingCore, TunnelSpec};
use smig::model::{BlockRule, Environment, Host, HostId, Landscape, RoutingCore as Core, Subnet};
use smig::plan::Target;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const WEB: &str = "192.168.10.11";
const DB: &str = "192.168.10.12";
const GW: &str = "192.168.10.1";

fn lab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab")
}

fn lab(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(lab_dir().join(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lab/{cmd}: {e}"))
}

fn check() -> Value {
    let out = lab("check", &["--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab/check --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn since_last(c: &Value, guest: &str, peer: &str) -> f64 {
    c["guests"][guest]["peers"][peer]["since_last_s"]
        .as_f64()
        .unwrap_or(-1.0)
}

fn echo_connects(c: &Value) -> u64 {
    c["guests"]["web"]["tcp_echo"]["connects"]
        .as_u64()
        .unwrap_or(0)
}

/// Polls lab/check until `ok` holds (or panics after `secs`); returns the time it took.
fn wait_until(secs: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let c = check();
        if ok(&c) {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(secs) {
            panic!("{what} did not happen within {secs} s; lab/check: {c}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn no_smig_tables(c: &Value) -> bool {
    ["hv1", "hv2", "c1"].iter().all(|h| {
        c["hosts"][h]["nft_smig"]
            .as_object()
            .is_none_or(|o| o.is_empty())
    }) && c["routing_core"]["nft_smig"]
        .as_object()
        .is_none_or(|o| o.is_empty())
}

fn smx_links(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show"])
        .output()
        .expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("smx-"))
        .map(String::from)
        .collect()
}

fn host(env: &str, name: &str, addr: &str, ns: &str) -> (String, Host) {
    (
        name.to_string(),
        Host {
            id: HostId(format!("{env}.{name}").into()),
            libvirt: format!("qemu+tls://{addr}/system").into(),
            address: addr.parse().unwrap(),
            network: format!("netns:{ns}"),
        },
    )
}

/// The lab's hosts, routing core and subnets, as the driver needs them.
fn landscape() -> Landscape {
    let mut l = Landscape::default();
    l.environments.insert(
        "dc".into(),
        Environment {
            name: "dc".into(),
            trusted: true,
            hosts: BTreeMap::from([
                host("dc", "hv1", "10.77.0.11", "dc-hv1"),
                host("dc", "hv2", "10.77.0.12", "dc-hv2"),
            ]),
            routing_core: Some(Core {
                network: "netns:dc-core".into(),
            }),
        },
    );
    l.environments.insert(
        "cloud".into(),
        Environment {
            name: "cloud".into(),
            trusted: false,
            hosts: BTreeMap::from([host("cloud", "c1", "10.78.0.21", "cloud-c1")]),
            routing_core: None,
        },
    );
    for (name, cidr) in [("app", "192.168.10.0/24"), ("batch", "192.168.20.0/24")] {
        l.subnets.insert(
            name.into(),
            Subnet {
                name: name.into(),
                cidr: cidr.parse().unwrap(),
            },
        );
    }
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_driver_on_the_lab() {
    assert!(is_root(), "this test needs root (it drives the lab)");
    let lock = lab_lock();
    let up = lab("up", &[]);
    assert!(
        up.status.success(),
        "lab/up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    wait_until(60, "every guest answering", |c| {
        c["all_answer"].as_bool() == Some(true)
    });
    let c0 = check();
    assert!(no_smig_tables(&c0), "smig tables before the test: {c0}");

    let drv = NetnsHostNetwork::from_landscape(&landscape());
    let hv2 = HostId("dc.hv2".into());
    let db: Ipv4Addr = DB.parse().unwrap();
    let rule = BlockRule {
        vm: "db".into(),
        address: db,
        peers: vec![WEB.parse().unwrap()],
        allow_ipsec: false,
    };

    // --- block: web <-> db stop answering, db still reaches its gateway ---
    assert_eq!(drv.block_rules(&hv2).await.unwrap(), vec![]);
    let t = Instant::now();
    drv.block(&hv2, &rule).await.expect("block");
    let block_ms = t.elapsed().as_millis();
    drv.block(&hv2, &rule).await.expect("block again");
    assert_eq!(drv.block_rules(&hv2).await.unwrap(), vec![rule.clone()]);
    let blocked = wait_until(10, "web and db no longer answering each other", |c| {
        since_last(c, "web", DB) > 1.5 && since_last(c, "db", WEB) > 1.5
    });
    let c = check();
    assert!(
        since_last(&c, "db", GW) < 1.0,
        "db must still reach its gateway: {c}"
    );
    assert!(
        c["hosts"]["hv2"]["nft_smig"]["inet"]["rules"].as_u64() == Some(2),
        "two block rules on hv2: {c}"
    );

    // --- unblock: answering again; the table is gone ---
    let t = Instant::now();
    drv.unblock(&hv2, "db", false).await.expect("unblock");
    let unblock_ms = t.elapsed().as_millis();
    drv.unblock(&hv2, "db", false).await.expect("unblock again");
    assert_eq!(drv.block_rules(&hv2).await.unwrap(), vec![]);
    let resumed = wait_until(10, "web and db answering again", |c| {
        c["guests"]["web"]["peers"][DB]["answers"].as_bool() == Some(true)
            && c["guests"]["db"]["peers"][WEB]["answers"].as_bool() == Some(true)
    });
    assert!(no_smig_tables(&check()), "smig table left after unblock");
    eprintln!(
        "block call {block_ms} ms (probes stopped within {:.2} s), unblock call {unblock_ms} ms (answering again after {:.2} s)",
        blocked.as_secs_f64(),
        resumed.as_secs_f64()
    );

    // --- the routing core's routes ---
    let routes = drv.routes("dc").await.expect("routes");
    let app = routes
        .iter()
        .find(|r| r.prefix == "192.168.10.0/24".parse().unwrap())
        .unwrap_or_else(|| panic!("no route to app on dc-core: {routes:?}"));
    assert_eq!(app.dev.as_deref(), Some("br-app"));
    assert!(!app.via_smig_tunnel);
    assert!(
        routes.iter().any(|r| r.dev.as_deref() == Some("wan0")
            && r.prefix
                .contains(&"10.78.0.21".parse::<Ipv4Addr>().unwrap())),
        "no route to the cloud underlay via the WAN: {routes:?}"
    );

    // --- db's connections: web's long-lived connection to db:7; reset -> web reconnects ---
    let conns = drv.connections(&hv2, db).await.expect("connections");
    let echo: Vec<_> = conns
        .iter()
        .filter(|c| c.local.port() == 7 && c.remote.ip().to_string() == WEB)
        .cloned()
        .collect();
    assert_eq!(echo.len(), 1, "web's connection to db:7 among {conns:?}");
    assert!(!echo[0].ipsec, "a bridged cleartext flow is not IPsec");
    let before = echo_connects(&check());
    let t = Instant::now();
    drv.reset_connections(&hv2, db, &echo).await.expect("reset");
    let reset_ms = t.elapsed().as_millis();
    let reconnected = wait_until(15, "web reconnecting to db:7", |c| {
        echo_connects(c) > before
            && c["guests"]["web"]["tcp_echo"]["since_last_s"]
                .as_f64()
                .is_some_and(|s| (0.0..1.0).contains(&s))
    });
    let after = drv.connections(&hv2, db).await.expect("connections");
    assert!(
        after.iter().any(|c| c.local.port() == 7
            && c.remote.ip().to_string() == WEB
            && c.remote != echo[0].remote),
        "a new connection from web to db:7 after the reset: {after:?}"
    );
    drv.reset_connections(&hv2, db, &echo)
        .await
        .expect("reset of a gone connection is fine");
    // The reset rules stay armed in the background until each flow met its reset (or the
    // window ends); settling waits for them to go.
    drv.settle().await.expect("settle");
    eprintln!(
        "reset call {reset_ms} ms, web reconnected {:.2} s after the call",
        reconnected.as_secs_f64()
    );
    assert!(no_smig_tables(&check()), "reset left a table");

    // --- subnet tunnel dc-core -> c1: added, read back, removed, nothing left ---
    let core = Target::RoutingCore("dc".into());
    let c1 = Target::Host(HostId("cloud.c1".into()));
    let spec = TunnelSpec {
        subnet: "app".into(),
        cidr: "192.168.10.0/24".parse().unwrap(),
        remote: "cloud.c1".into(),
        remote_address: "10.78.0.21".parse().unwrap(),
    };
    drv.tunnel_add(&core, &spec).await.expect("tunnel add");
    drv.tunnel_add(&core, &spec)
        .await
        .expect("tunnel add again");
    let t = drv.tunnels(&core).await.unwrap();
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        (t[0].subnet.as_str(), t[0].remote.as_str()),
        ("app", "cloud.c1")
    );
    let t = drv.tunnels(&c1).await.unwrap();
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].remote, "core:dc");
    assert_eq!(smx_links("dc-core").len(), 1);
    assert_eq!(smx_links("cloud-c1").len(), 1);
    let routes = drv.routes("dc").await.unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dev.as_deref() == Some("br-app") && r.via_smig_tunnel),
        "app's route marked as through the tunnel: {routes:?}"
    );
    let c = check();
    assert!(
        c["routing_core"]["nft_smig"]["inet"]["rules"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "guard on the core while the tunnel exists: {c}"
    );
    drv.tunnel_remove(&core, "app")
        .await
        .expect("tunnel remove");
    drv.tunnel_remove(&core, "app")
        .await
        .expect("tunnel remove again");
    assert_eq!(drv.tunnels(&core).await.unwrap(), vec![]);
    assert_eq!(drv.tunnels(&c1).await.unwrap(), vec![]);
    assert!(smx_links("dc-core").is_empty() && smx_links("cloud-c1").is_empty());

    // --- the lab as found ---
    wait_until(20, "every guest answering at the end", |c| {
        c["all_answer"].as_bool() == Some(true) && no_smig_tables(c)
    });
    drop(lock);
}

fn ip_netns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// Packets the guard dropped on a host (the counters of its VXLAN rules).
fn guard_drops(ns: &str) -> u64 {
    let out = ip_netns(ns, &["nft", "-j", "list", "table", "inet", "smig"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            r["comment"]
                .as_str()
                .is_some_and(|c| c.starts_with("smig guard") && c.contains("vxlan"))
        })
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// The overlay data path hv1 <-> c1 (VXLAN between the overlay addresses) carried by an IPsec
/// SA between those addresses (the lab's own `lab/securepath` SA, its VXLANs removed so only
/// smig's link joins the bridges). With charon on c1 stopped and the lab's `unreachable`
/// fallback route gone, c1's VXLAN would leave in cleartext by its default route: the guard
/// drops it, and the WAN capture shows no cleartext VXLAN or guest packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_guard_holds_when_charon_stops() {
    assert!(is_root(), "this test needs root (it drives the lab)");
    let lock = lab_lock();
    let up = lab("up", &[]);
    assert!(
        up.status.success(),
        "lab/up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    wait_until(60, "every guest answering", |c| {
        c["all_answer"].as_bool() == Some(true)
    });

    let drv = NetnsHostNetwork::from_landscape(&landscape());
    let hv1 = HostId("dc.hv1".into());
    let c1 = HostId("cloud.c1".into());
    let sp = lab("securepath", &["up", "hv1", "c1"]);
    assert!(
        sp.status.success(),
        "lab/securepath up: {}",
        String::from_utf8_lossy(&sp.stderr)
    );
    for (ns, s) in [
        ("dc-hv1", "app"),
        ("dc-hv1", "batch"),
        ("cloud-c1", "app"),
        ("cloud-c1", "batch"),
    ] {
        ip_netns(ns, &["ip", "link", "del", &format!("vxl-{s}")]);
    }
    let t = Instant::now();
    drv.overlay_add(&hv1, &c1, "app")
        .await
        .expect("overlay add");
    let add_ms = t.elapsed().as_millis();
    drv.overlay_add(&hv1, &c1, "app")
        .await
        .expect("overlay add again");
    assert_eq!(smx_links("dc-hv1").len(), 1);
    assert_eq!(smx_links("cloud-c1").len(), 1);

    // Through the SA: an address on c1's bridge reaches web (ARP and ICMP over the overlay).
    let _ = ip_netns(
        "cloud-c1",
        &["ip", "addr", "add", "192.168.10.250/24", "dev", "br-app"],
    );
    let ping = ip_netns(
        "cloud-c1",
        &["ping", "-c", "3", "-i", "0.3", "-W", "2", WEB],
    );
    let path_works = ping.status.success();
    // A TCP connection across the overlay is seen on web's host as carried by IPsec.
    let mut client = Command::new("ip")
        .args(["netns", "exec", "cloud-c1", "/usr/bin/python3", "-c"])
        .arg("import socket,time\ns=socket.create_connection(('192.168.10.11',7),timeout=5)\ns.sendall(b'x\\n')\ns.recv(16)\ntime.sleep(8)")
        .spawn()
        .expect("client on c1");
    let web: Ipv4Addr = WEB.parse().unwrap();
    let mut via_overlay = Vec::new();
    let seen = Instant::now();
    while via_overlay.is_empty() && seen.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(300));
        via_overlay = drv
            .connections(&hv1, web)
            .await
            .expect("connections")
            .into_iter()
            .filter(|c| c.remote.ip().to_string() == "192.168.10.250")
            .collect();
    }
    let _ = client.kill();
    let _ = client.wait();

    // Fail closed: charon on c1 down, no fallback route; the guard alone must hold.
    ip_netns(
        "cloud-c1",
        &["ip", "route", "del", "unreachable", "172.31.0.11/32"],
    );
    let before = guard_drops("cloud-c1");
    let start = lab("capture", &["start"]);
    assert!(
        start.status.success(),
        "lab/capture start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    let stop = lab("host", &["c1", "charon", "stop"]);
    assert!(
        stop.status.success(),
        "charon stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    // c1's bridge floods broadcasts to the overlay: make some (ARP for an absent address).
    let _ = ip_netns(
        "cloud-c1",
        &["ip", "addr", "add", "192.168.10.250/24", "dev", "br-app"],
    );
    let _ = ip_netns(
        "cloud-c1",
        &["ping", "-c", "5", "-i", "0.3", "-W", "1", "192.168.10.11"],
    );
    let _ = ip_netns(
        "cloud-c1",
        &["ip", "addr", "del", "192.168.10.250/24", "dev", "br-app"],
    );
    let cap = lab("capture", &["stop", "--json"]);
    let report: Value = serde_json::from_slice(&cap.stdout).unwrap_or(Value::Null);
    let dropped = guard_drops("cloud-c1") - before;

    // Leave the lab as found, whatever happened above.
    drv.overlay_remove(&hv1, &c1, "app")
        .await
        .expect("overlay remove");
    drv.overlay_remove(&hv1, &c1, "app")
        .await
        .expect("overlay remove again");
    lab("host", &["c1", "charon", "start"]);
    lab("securepath", &["down", "hv1", "c1"]);

    assert!(
        path_works,
        "c1 could not reach web through the overlay and the SA: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(via_overlay.len(), 1, "c1's connection to web:7 seen on hv1");
    assert!(
        via_overlay[0].ipsec,
        "marked as carried by IPsec: {via_overlay:?}"
    );
    assert!(dropped > 0, "the guard dropped nothing on c1");
    assert_eq!(
        report["vxlan_cleartext"].as_u64(),
        Some(0),
        "capture: {report}"
    );
    assert_eq!(
        report["guest_cleartext"].as_u64(),
        Some(0),
        "capture: {report}"
    );
    assert_eq!(report["leaked"].as_bool(), Some(false), "capture: {report}");
    assert!(smx_links("dc-hv1").is_empty() && smx_links("cloud-c1").is_empty());
    eprintln!("overlay_add {add_ms} ms; with charon stopped the guard dropped {dropped} packets on c1, WAN capture: {report}");
    wait_until(30, "every guest answering at the end", |c| {
        c["all_answer"].as_bool() == Some(true) && no_smig_tables(c)
    });
    drop(lock);
}
