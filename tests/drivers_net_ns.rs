//! The host network driver against two throwaway network namespaces of its own (root, no lab):
//! every nftables batch it renders is accepted by the kernel, rules read back, the guard, the
//! subnet tunnel and the overlay path come and go, and every call is idempotent.

use smig::drivers::netns::{nft, HostOps, NetnsHostNetwork, NetnsOps};
use smig::drivers::{HostNetwork, RoutingCore, TunnelSpec};
use smig::model::{BlockRule, Environment, Host, HostId, Landscape, RoutingCore as Core, Subnet};
use smig::plan::Target;
use std::collections::BTreeMap;
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `<prefix>-core` and `<prefix>-h`, each with a bridge `br-app` with one veth
/// port and an overlay address on `lo`; deleted on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn setup(prefix: &str) -> Namespaces {
    let mut made = Namespaces(Vec::new());
    for (suffix, overlay) in [("core", "172.31.9.1/32"), ("h", "172.31.9.2/32")] {
        let ns = format!("{prefix}-{suffix}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        ip(&["netns", "add", &ns]);
        made.0.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", overlay, "dev", "lo"]);
        ip(&["-n", &ns, "link", "add", "br-app", "type", "bridge"]);
        ip(&[
            "-n", &ns, "link", "add", "va", "type", "veth", "peer", "name", "vb",
        ]);
        ip(&["-n", &ns, "link", "set", "va", "master", "br-app", "up"]);
        ip(&["-n", &ns, "link", "set", "br-app", "up"]);
        ip(&["-n", &ns, "addr", "add", "192.168.77.1/24", "dev", "br-app"]);
    }
    made
}

fn landscape(prefix: &str) -> Landscape {
    let mut l = Landscape::default();
    l.environments.insert(
        "dc".into(),
        Environment {
            name: "dc".into(),
            trusted: true,
            hosts: BTreeMap::from([(
                "h".to_string(),
                Host {
                    id: HostId("dc.h".into()),
                    libvirt: "qemu+tls://10.0.0.2/system".into(),
                    address: "10.0.0.2".parse().unwrap(),
                    network: format!("netns:{prefix}-h"),
                },
            )]),
            routing_core: Some(Core {
                network: format!("netns:{prefix}-core"),
            }),
        },
    );
    l.subnets.insert(
        "app".into(),
        Subnet {
            name: "app".into(),
            cidr: "192.168.77.0/24".parse().unwrap(),
        },
    );
    l
}

fn smx_links(ns: &str) -> usize {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": smx-"))
        .count()
}

fn has_table(ns: &str, family: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", family, "smig"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_in_private_namespaces() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(root, "this test needs root (it creates network namespaces)");
    let prefix = format!("smig-t{}", std::process::id());
    let ns = setup(&prefix);
    let (core_ns, host_ns) = (ns.0[0].clone(), ns.0[1].clone());
    let drv = NetnsHostNetwork::from_landscape(&landscape(&prefix));
    let h = HostId("dc.h".into());

    // block / read back / replace / unblock, each twice
    let rule = BlockRule {
        vm: "db".into(),
        address: "192.168.77.12".parse().unwrap(),
        peers: vec!["192.168.77.11".parse().unwrap()],
        allow_ipsec: false,
    };
    drv.block(&h, &rule).await.expect("block");
    drv.block(&h, &rule).await.expect("block again");
    assert_eq!(drv.block_rules(&h).await.unwrap(), vec![rule.clone()]);
    let wider = BlockRule {
        peers: vec![
            "192.168.77.1".parse().unwrap(),
            "192.168.77.11".parse().unwrap(),
        ],
        ..rule.clone()
    };
    drv.block(&h, &wider).await.expect("replace");
    assert_eq!(drv.block_rules(&h).await.unwrap(), vec![wider.clone()]);
    let other = BlockRule {
        vm: "web".into(),
        address: "192.168.77.11".parse().unwrap(),
        peers: vec![],
        allow_ipsec: false,
    };
    drv.block(&h, &other).await.expect("second vm");
    assert_eq!(drv.block_rules(&h).await.unwrap().len(), 2);
    drv.unblock(&h, "web", false).await.expect("unblock web");
    drv.unblock(&h, "db", true)
        .await
        .expect("unblock db secure-only");
    drv.unblock(&h, "db", true).await.expect("again");
    assert_eq!(drv.block_rules(&h).await.unwrap(), vec![]);
    assert!(
        has_table(&host_ns, "inet"),
        "guard stays for a secure-only VM"
    );
    drv.unblock(&h, "db", false).await.expect("unblock db");
    drv.unblock(&h, "db", false)
        .await
        .expect("unblock db again");
    assert!(
        !has_table(&host_ns, "inet") && !has_table(&host_ns, "bridge"),
        "nothing of smig left"
    );

    // the reset batch is accepted on bridge ports, and removed
    let ops = NetnsOps::enter(&host_ns).expect("enter");
    let flow = nft::Flow {
        src: "192.168.77.11".parse().unwrap(),
        sport: 40000,
        dst: "192.168.77.12".parse().unwrap(),
        dport: 7,
    };
    ops.nft_apply(nft::reset_commands(&[flow], &["va".into()]))
        .await
        .expect("reset rules");
    assert!(has_table(&host_ns, "netdev"));
    let counts = || async {
        let rules = ops
            .nft_rule_counts(nft::RESET_FAMILY)
            .await
            .expect("reset rule counters over nfnetlink");
        nft::resets_sent(&rules)
    };
    assert!(counts().await.is_empty(), "no packet, no reset");
    // A segment of the flow entering port `va` (sent from its veth peer) meets its reset.
    ip(&["-n", &host_ns, "link", "set", "vb", "up"]);
    ip(&[
        "-n",
        &host_ns,
        "addr",
        "add",
        "192.168.77.11/32",
        "dev",
        "vb",
    ]);
    ip(&[
        "-n",
        &host_ns,
        "route",
        "add",
        "192.168.77.12/32",
        "dev",
        "vb",
    ]);
    ip(&[
        "-n",
        &host_ns,
        "neigh",
        "add",
        "192.168.77.12",
        "lladdr",
        "02:00:00:00:00:12",
        "dev",
        "vb",
    ]);
    let syn = "import socket\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'vb')\n\
        s.bind(('192.168.77.11', 40000))\n\
        s.settimeout(1)\n\
        try:\n    s.connect(('192.168.77.12', 7))\n\
        except OSError:\n    pass\n";
    let out = Command::new("ip")
        .args(["netns", "exec", &host_ns, "python3", "-c", syn])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts().await.into_iter().collect::<Vec<_>>(), vec![0]);
    ops.nft_delete_table(nft::RESET_FAMILY)
        .await
        .expect("reset table deleted over nfnetlink");
    assert!(!has_table(&host_ns, "netdev"));
    assert!(counts().await.is_empty(), "no table, no rules");
    ops.nft_delete_table(nft::RESET_FAMILY)
        .await
        .expect("deleting a table that is gone is fine");
    ops.nft_delete_table("bridge")
        .await
        .expect_err("smig has no bridge-family table");
    assert!(ops.conntrack(Vec::new()).await.is_ok(), "conntrack read");

    // subnet tunnel core -> host, twice each way
    let core = Target::RoutingCore("dc".into());
    let spec = TunnelSpec {
        subnet: "app".into(),
        cidr: "192.168.77.0/24".parse().unwrap(),
        remote: "dc.h".into(),
        remote_address: "10.0.0.2".parse().unwrap(),
    };
    // A data path adds and removes the guard chains beside a VM's block, and the block
    // rule reading does not change (the walker keeps it across IPsec installs and removals).
    drv.block(&h, &rule).await.expect("block before the path");
    let blocked = drv.block_rules(&h).await.unwrap();
    assert_eq!(blocked, vec![rule.clone()]);
    drv.tunnel_add(&core, &spec).await.expect("tunnel add");
    assert_eq!(
        drv.block_rules(&h).await.unwrap(),
        blocked,
        "after the guard"
    );
    drv.tunnel_add(&core, &spec)
        .await
        .expect("tunnel add again");
    assert_eq!(smx_links(&core_ns), 1);
    assert_eq!(smx_links(&host_ns), 1);
    let t = drv.tunnels(&core).await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].subnet.as_str(), t[0].remote.as_str()),
        ("app", "dc.h")
    );
    assert_eq!(
        drv.tunnels(&Target::Host(h.clone())).await.unwrap()[0].remote,
        "core:dc"
    );
    let routes = drv.routes("dc").await.unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dev.as_deref() == Some("br-app") && r.via_smig_tunnel),
        "{routes:?}"
    );
    assert!(
        has_table(&core_ns, "inet")
            && has_table(&host_ns, "inet")
            && has_table(&core_ns, "bridge")
            && has_table(&host_ns, "bridge"),
        "guards"
    );
    drv.tunnel_remove(&core, "app").await.expect("remove");
    assert_eq!(
        drv.block_rules(&h).await.unwrap(),
        blocked,
        "after the guard went"
    );
    drv.unblock(&h, "db", false)
        .await
        .expect("unblock after the path");
    drv.tunnel_remove(&core, "app").await.expect("remove again");
    assert_eq!(smx_links(&core_ns) + smx_links(&host_ns), 0);
    for ns in [&core_ns, &host_ns] {
        assert!(!has_table(ns, "inet") && !has_table(ns, "bridge"), "{ns}");
    }
    let routes = drv.routes("dc").await.unwrap();
    assert!(routes.iter().all(|r| !r.via_smig_tunnel), "{routes:?}");
    drop(ns);
}

/// `conntrack ARGS` in namespace `ns`, which must succeed.
fn conntrack(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .expect("conntrack");
    assert!(
        out.status.success(),
        "conntrack {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP entry 192.168.78.11:`sport` -> `dst`:7, ESTABLISHED.
fn tcp_entry(sport: u16, dst: &str) -> Vec<String> {
    let sport = sport.to_string();
    [
        "-p",
        "tcp",
        "-s",
        "192.168.78.11",
        "-d",
        dst,
        "--sport",
        &sport,
        "--dport",
        "7",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn with<'a>(entry: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = entry.iter().map(String::as_str).collect();
    v.extend_from_slice(more);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_read_follows_the_table_through_its_events() {
    let ns = "smig-t-ct";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    ip(&["netns", "add", ns]);
    let _made = Namespaces(vec![ns.to_string()]);
    // Creates the entry, established.
    let insert = [
        "-I",
        "--state",
        "ESTABLISHED",
        "--timeout",
        "120",
        "-u",
        "ASSURED",
    ];
    let (old, new, other) = (
        tcp_entry(40001, "192.168.78.12"),
        tcp_entry(40002, "192.168.78.12"),
        tcp_entry(40003, "10.9.9.9"),
    );
    // `old` exists before the first read, `new` appears after it.
    conntrack(ns, &with(&old, &insert));
    let ops = NetnsOps::enter(ns).expect("enter");
    let scope = vec!["192.168.78.12/32".parse().unwrap()];
    let ports = |entries: &[smig::drivers::netns::conntrack::Entry]| {
        let mut p: Vec<(u16, u32)> = entries.iter().map(|e| (e.orig.sport, e.mark)).collect();
        p.sort();
        p
    };
    let first = ops.conntrack(scope.clone()).await.expect("first read");
    assert_eq!(ports(&first), [(40001, 0)]);
    assert_eq!(first[0].tcp_state, Some(3), "ESTABLISHED");
    for e in [&new, &other] {
        conntrack(ns, &with(e, &insert));
    }
    conntrack(ns, &with(&old, &["-U", "-m", "7"]));
    conntrack(ns, &with(&new, &["-U", "-m", "9"]));
    let second = ops.conntrack(scope.clone()).await.expect("second read");
    assert_eq!(
        ports(&second),
        [(40001, 7), (40002, 9)],
        "a new entry, both marks, nothing outside the scope"
    );
    // Gone by another hand: reported or not, a read no longer has them.
    conntrack(ns, &with(&old, &["-D"]));
    conntrack(ns, &with(&new, &["-D"]));
    assert_eq!(ports(&ops.conntrack(scope.clone()).await.unwrap()), []);
    // Deleted by the driver itself.
    conntrack(ns, &with(&new, &insert));
    let again = ops.conntrack(scope.clone()).await.unwrap();
    assert_eq!(ports(&again), [(40002, 0)]);
    ops.conntrack_delete(again[0].orig).await.expect("delete");
    assert_eq!(ports(&ops.conntrack(scope).await.unwrap()), []);
    let wide = ops.conntrack(vec!["10.9.9.0/24".parse().unwrap()]).await;
    assert_eq!(ports(&wide.unwrap()), [(40003, 0)]);
}
