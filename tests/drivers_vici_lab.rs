//! The VICI driver against the lab's real charons (root; takes the lab lock; runs `lab/up`):
//! a smig connection between hv1 and c1 loaded on both ends, initiated from c1, up on both ends
//! with counters that rise under a ping across the overlay addresses, unloaded without a trace
//! (checked through the driver and independently with swanctl); loads, initiates and unloads
//! repeated (idempotent); a wrong key fails without showing either key; a stopped charon is an
//! Unreachable error naming the host, and the driver recovers once it is back. Prints the
//! load + initiate latency. Leaves the lab as it found it.

mod lab_support;

use lab_support::{is_root, lab_lock};
use smig::drivers::vici::{shared_key_id, Vici, ViciOptions};
use smig::drivers::{DriverError, Ipsec, IpsecConfig, IpsecCredential};
use smig::model::{ipsec_connection_name, Environment, Host, HostId, Landscape, Secret};
use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LINK: &str = "vici_lab_test";

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab")
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    eprintln!(
        "{shown} -> {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lab(args: &[&str]) -> Output {
    let mut c = Command::new(lab_dir().join(args[0]));
    c.args(&args[1..]);
    run(&mut c)
}

fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// swanctl against a lab host's charon: an independent view of what the driver did.
fn swanctl(host: &str, args: &[&str]) -> String {
    let dir = format!("/run/smig-lab/hosts/{host}");
    let mut c = Command::new("swanctl");
    c.args(args)
        .arg("--uri")
        .arg(format!("unix://{dir}/charon.vici"))
        .env("STRONGSWAN_CONF", format!("{dir}/strongswan.conf"));
    must(run(&mut c), &format!("swanctl {args:?} on {host}"))
}

fn landscape() -> Landscape {
    let mut l = Landscape::default();
    for (env, trusted, hosts) in [
        (
            "dc",
            true,
            vec![("hv1", "10.77.0.11"), ("hv2", "10.77.0.12")],
        ),
        ("cloud", false, vec![("c1", "10.78.0.21")]),
    ] {
        l.environments.insert(
            env.into(),
            Environment {
                name: env.into(),
                trusted,
                hosts: hosts
                    .into_iter()
                    .map(|(name, addr)| {
                        (
                            name.to_string(),
                            Host {
                                id: HostId::new(env, name),
                                libvirt: format!("qemu+tls://{addr}/system").into(),
                                address: addr.parse().unwrap(),
                                network: format!("netns:{env}-{name}"),
                            },
                        )
                    })
                    .collect(),
                routing_core: None,
            },
        );
    }
    l
}

fn hv1() -> HostId {
    HostId::new("dc", "hv1")
}
fn c1() -> HostId {
    HostId::new("cloud", "c1")
}

fn end(local: HostId, remote: HostId, psk: &str) -> IpsecConfig {
    let addr = |h: &HostId| -> Ipv4Addr {
        if *h == hv1() {
            Ipv4Addr::new(10, 77, 0, 11)
        } else {
            Ipv4Addr::new(10, 78, 0, 21)
        }
    };
    IpsecConfig {
        name: ipsec_connection_name(LINK, &local, &remote),
        link: LINK.into(),
        local_address: addr(&local),
        remote_address: addr(&remote),
        local,
        remote,
        proposals: vec!["aes256-sha256-modp2048".into()],
        credential: IpsecCredential::Psk(Secret::new(psk)),
    }
}

fn canary(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("canary-{tag}-{:08x}{:x}", nanos, std::process::id())
}

/// IKE SAs of `name` that swanctl lists on `host`.
fn swanctl_ike_sas(host: &str, name: &str) -> usize {
    swanctl(host, &["--list-sas"])
        .lines()
        .filter(|l| l.starts_with(&format!("{name}: #")))
        .count()
}

fn ping_overlay() {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        "dc-hv1",
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "172.31.0.11",
        "172.31.0.21",
    ]));
    must(out, "ping hv1 -> c1 across the overlay");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything the driver showed in errors, kept to check no key leaked into them.
#[derive(Default)]
struct Shown(Vec<String>);

impl Shown {
    fn err(&mut self, e: &DriverError) {
        self.0.push(format!("{e} | {e:?}"));
    }
}

async fn body(v: &Vici, shown: &mut Shown) {
    let name = ipsec_connection_name(LINK, &hv1(), &c1());
    let psk = canary("psk");
    let (a, b) = (end(hv1(), c1(), &psk), end(c1(), hv1(), &psk));
    shown.0.push(format!("{a:?} {b:?} {v:?}"));

    // Leftovers of an interrupted run go first (unload is idempotent).
    v.unload(&hv1(), &name)
        .await
        .expect("unload hv1 (clean slate)");
    v.unload(&c1(), &name)
        .await
        .expect("unload c1 (clean slate)");

    // Load on both ends, initiate from the cloud end.
    let t0 = Instant::now();
    v.load(&hv1(), &a).await.expect("load hv1");
    v.load(&c1(), &b).await.expect("load c1");
    let t_load = t0.elapsed();
    let t1 = Instant::now();
    v.initiate(&c1(), &name).await.expect("initiate c1");
    let t_init = t1.elapsed();
    eprintln!(
        "VICI load (both ends) {:.1} ms + initiate {:.1} ms = {:.1} ms",
        ms(t_load),
        ms(t_init),
        ms(t_load + t_init)
    );

    // Up on both ends, through the driver and through swanctl.
    for (h, remote) in [(hv1(), c1()), (c1(), hv1())] {
        let conns = v.connections(&h).await.expect("connections");
        let c = conns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} not listed on {h}: {conns:?}"));
        assert!(c.sa_up, "{name} not up on {h}: {c:?}");
        assert_eq!(c.remote, remote);
        assert_eq!(c.link, LINK);
    }
    for h in ["hv1", "c1"] {
        let sas = swanctl(h, &["--list-sas"]);
        assert!(
            sas.lines()
                .any(|l| l.contains(&name) && l.contains("INSTALLED")),
            "swanctl on {h} shows no installed {name}:\n{sas}"
        );
        assert!(sas.contains("172.31.0.11/32") && sas.contains("172.31.0.21/32"));
    }

    // Traffic across the overlay addresses rides the SA: counters rise on both ends.
    let before = |cs: Vec<smig::model::IpsecConnection>| {
        cs.into_iter()
            .find(|c| c.name == name)
            .map(|c| (c.bytes_in, c.bytes_out))
            .unwrap()
    };
    let hv1_before = before(v.connections(&hv1()).await.unwrap());
    let c1_before = before(v.connections(&c1()).await.unwrap());
    ping_overlay();
    let hv1_after = before(v.connections(&hv1()).await.unwrap());
    let c1_after = before(v.connections(&c1()).await.unwrap());
    eprintln!("counters hv1 {hv1_before:?} -> {hv1_after:?}, c1 {c1_before:?} -> {c1_after:?}");
    assert!(hv1_after.1 > hv1_before.1, "hv1 bytes out did not rise");
    assert!(hv1_after.0 > hv1_before.0, "hv1 bytes in did not rise");
    assert!(c1_after.0 > c1_before.0, "c1 bytes in did not rise");
    assert!(c1_after.1 > c1_before.1, "c1 bytes out did not rise");

    // Idempotent: loading again keeps the SA, initiating again (from either end) adds none.
    v.load(&hv1(), &a).await.expect("load hv1 again");
    v.load(&c1(), &b).await.expect("load c1 again");
    v.initiate(&c1(), &name).await.expect("initiate c1 again");
    v.initiate(&hv1(), &name)
        .await
        .expect("initiate hv1 (already up)");
    for h in ["hv1", "c1"] {
        assert_eq!(swanctl_ike_sas(h, &name), 1, "one IKE SA of {name} on {h}");
    }
    assert!(v
        .connections(&hv1())
        .await
        .unwrap()
        .iter()
        .any(|c| c.name == name && c.sa_up));

    // Unload both ends, twice; nothing of it is left anywhere.
    let t2 = Instant::now();
    v.unload(&hv1(), &name).await.expect("unload hv1");
    v.unload(&c1(), &name).await.expect("unload c1");
    eprintln!("VICI unload (both ends) {:.1} ms", ms(t2.elapsed()));
    v.unload(&hv1(), &name).await.expect("unload hv1 again");
    v.unload(&c1(), &name).await.expect("unload c1 again");
    assert_nothing_left(v, &name).await;

    // Repeated load + initiate + unload: the latency spread.
    let mut cycles = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        v.load(&hv1(), &a).await.unwrap();
        v.load(&c1(), &b).await.unwrap();
        v.initiate(&c1(), &name).await.unwrap();
        cycles.push(ms(t.elapsed()));
        v.unload(&c1(), &name).await.unwrap();
        v.unload(&hv1(), &name).await.unwrap();
    }
    cycles.sort_by(f64::total_cmp);
    eprintln!(
        "load both ends + initiate, 5 cycles: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        cycles[0], cycles[2], cycles[4]
    );
    assert_nothing_left(v, &name).await;

    // Initiating what is not loaded fails clearly; so does a peer without its end.
    let e = v.initiate(&hv1(), &name).await.expect_err("nothing loaded");
    shown.err(&e);
    eprintln!("not loaded: {e}");
    assert!(matches!(e, DriverError::Failed { .. }) && e.to_string().contains("dc.hv1"));
    v.load(&c1(), &b).await.unwrap();
    let t = Instant::now();
    let e = v
        .initiate(&c1(), &name)
        .await
        .expect_err("the peer has no connection");
    shown.err(&e);
    eprintln!("peer not loaded ({:.0} ms): {e}", ms(t.elapsed()));
    v.unload(&c1(), &name).await.unwrap();
    assert_nothing_left(v, &name).await;

    // A wrong key on one end: initiate fails, naming the host, showing neither key.
    let wrong = canary("wrong");
    v.load(&hv1(), &a).await.unwrap();
    v.load(&c1(), &end(c1(), hv1(), &wrong)).await.unwrap();
    let e = v
        .initiate(&c1(), &name)
        .await
        .expect_err("initiate with mismatched keys must fail");
    shown.err(&e);
    eprintln!("mismatched keys: {e}");
    assert!(e.to_string().contains("cloud.c1"), "{e}");
    v.unload(&c1(), &name).await.unwrap();
    v.unload(&hv1(), &name).await.unwrap();
    assert_nothing_left(v, &name).await;

    // Certificate authentication: each end with its own lab certificate, the lab CA for the
    // peer's.
    let pki = "/run/smig-lab/pki";
    let with_cert = |mut c: IpsecConfig, me: &str| {
        c.credential = IpsecCredential::Cert {
            cert: format!("{pki}/{me}/client-cert.pem"),
            key: format!("{pki}/{me}/client-key.pem"),
            ca: Some(format!("{pki}/cacert.pem")),
        };
        c
    };
    let t = Instant::now();
    v.load(&hv1(), &with_cert(a.clone(), "hv1"))
        .await
        .expect("load hv1 (cert)");
    v.load(&c1(), &with_cert(b.clone(), "c1"))
        .await
        .expect("load c1 (cert)");
    v.initiate(&c1(), &name).await.expect("initiate c1 (cert)");
    eprintln!(
        "certificates: load both ends + initiate {:.1} ms",
        ms(t.elapsed())
    );
    for (h, remote) in [(hv1(), c1()), (c1(), hv1())] {
        let conns = v.connections(&h).await.unwrap();
        assert!(
            conns
                .iter()
                .any(|c| c.name == name && c.sa_up && c.remote == remote),
            "cert SA not up on {h}: {conns:?}"
        );
    }
    ping_overlay();
    v.unload(&c1(), &name).await.unwrap();
    v.unload(&hv1(), &name).await.unwrap();
    assert_nothing_left(v, &name).await;

    // charon stopped on c1: it holds nothing (no connection listed, an unload has nothing to
    // do, so a rollback completes); a load is a clear Unreachable naming the host; back once
    // it runs again.
    must(
        lab(&["host", "c1", "charon", "stop"]),
        "stopping c1's charon",
    );
    let listed = v
        .connections(&c1())
        .await
        .expect("a stopped charon lists nothing");
    assert!(
        listed.is_empty(),
        "a stopped charon holds nothing: {listed:?}"
    );
    v.unload(&c1(), &name)
        .await
        .expect("unload on a stopped charon has nothing to do");
    let e = v.load(&c1(), &b).await.expect_err("charon is stopped");
    shown.err(&e);
    match &e {
        DriverError::Unreachable { target, .. } => assert_eq!(target, "cloud.c1", "{e}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    eprintln!("charon stopped: {e}");
    must(
        lab(&["host", "c1", "charon", "start"]),
        "starting c1's charon",
    );
    assert!(v
        .connections(&c1())
        .await
        .expect("after restart")
        .is_empty());

    // No error, Debug output or daemon log holds a key.
    for text in &shown.0 {
        assert!(
            !text.contains(&psk) && !text.contains(&wrong),
            "a key shows in: {text}"
        );
    }
    for h in ["hv1", "c1"] {
        let log = std::fs::read_to_string(format!("/run/smig-lab/hosts/{h}/log/charon.log"))
            .unwrap_or_default();
        assert!(
            !log.contains(&psk) && !log.contains(&wrong),
            "charon's log on {h} holds a key"
        );
    }
}

async fn assert_nothing_left(v: &Vici, name: &str) {
    for (h, lab_name) in [(hv1(), "hv1"), (c1(), "c1")] {
        let conns = v.connections(&h).await.unwrap();
        assert!(
            !conns.iter().any(|c| c.name == name),
            "{name} still on {h}: {conns:?}"
        );
        let keys = v.shared_key_ids(&h).await.unwrap();
        assert!(
            !keys.contains(&shared_key_id(name)),
            "key of {name} still on {h}: {keys:?}"
        );
        assert!(!swanctl(lab_name, &["--list-conns"]).contains(name));
        assert!(!swanctl(lab_name, &["--list-sas"]).contains(name));
    }
}

#[test]
fn vici_driver_loads_initiates_lists_and_unloads_on_the_lab() {
    assert!(
        is_root(),
        "the VICI lab test needs root (it drives the lab); run `sudo cargo test --test drivers_vici_lab`"
    );
    let _lock = lab_lock();
    must(lab(&["up"]), "lab/up");

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let v = Vici::new(&landscape(), ViciOptions::lab()).expect("driver");
    let mut shown = Shown::default();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(body(&v, &mut shown))));

    // Leave the lab as found, whatever happened.
    let _ = lab(&["host", "c1", "charon", "start"]);
    let name = ipsec_connection_name(LINK, &hv1(), &c1());
    rt.block_on(async {
        for h in [hv1(), c1()] {
            if let Err(e) = v.unload(&h, &name).await {
                eprintln!("cleanup on {h}: {e}");
            }
        }
    });
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
