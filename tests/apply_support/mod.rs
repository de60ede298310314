//! Shared fixtures for the apply tests: the reference landscape (as a `Landscape` and as a
//! discovered `Observed`), a small DAG builder, and landscape comparisons.
#![allow(dead_code)]

use smig::apply::events::{self, Event};
use smig::apply::{Engine, ExecContext, OnFailure, WalkOptions};
use smig::drivers::double::LandscapeDouble;
use smig::drivers::Drivers;
use smig::model::*;
use smig::plan::{Action, Fact, Inverse, Plan, Step, StepKind, Target};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CANARY: &str = "canary-psk-7f3a91c2";

pub fn h(s: &str) -> HostId {
    let (e, n) = s.split_once('.').unwrap();
    HostId::new(e, n)
}

fn host(env: &str, name: &str, addr: &str) -> (String, Host) {
    (
        name.into(),
        Host {
            id: HostId::new(env, name),
            libvirt: format!("qemu+tls://{addr}/system").into(),
            address: addr.parse().unwrap(),
            network: format!("netns:{env}-{name}"),
        },
    )
}

fn vm(name: &str, host: &str, subnet: &str, addr: &str) -> (String, Vm) {
    (
        name.into(),
        Vm {
            name: name.into(),
            domain: name.into(),
            host: h(host),
            subnet: subnet.into(),
            address: addr.parse().unwrap(),
            migration: Migration::default(),
        },
    )
}

/// SPEC.md's reference landscape plus a VM alone in its subnet (`batch`), desired state:
/// db and batch in the cloud.
pub fn landscape() -> Landscape {
    let mut l = Landscape::default();
    l.environments.insert(
        "dc".into(),
        Environment {
            name: "dc".into(),
            trusted: true,
            hosts: BTreeMap::from([
                host("dc", "hv1", "10.77.0.11"),
                host("dc", "hv2", "10.77.0.12"),
            ]),
            routing_core: Some(RoutingCore {
                network: "netns:dc-core".into(),
            }),
        },
    );
    l.environments.insert(
        "cloud".into(),
        Environment {
            name: "cloud".into(),
            trusted: false,
            hosts: BTreeMap::from([host("cloud", "c1", "10.78.0.21")]),
            routing_core: None,
        },
    );
    for (n, c) in [("app", "192.168.10.0/24"), ("bsub", "192.168.20.0/24")] {
        l.subnets.insert(
            n.into(),
            Subnet {
                name: n.into(),
                cidr: c.parse().unwrap(),
            },
        );
    }
    l.vms = BTreeMap::from([
        vm("web", "dc.hv1", "app", "192.168.10.11"),
        vm("db", "cloud.c1", "app", "192.168.10.12"),
        vm("batch", "cloud.c1", "bsub", "192.168.20.5"),
    ]);
    l.secure_links.insert(
        "web_db".into(),
        SecureLink {
            name: "web_db".into(),
            between: vec!["web".into(), "db".into()],
            ipsec: IpsecSpec {
                proposals: vec!["aes256-sha256-modp2048".into()],
                auth: IpsecAuth::Psk(Secret::new(CANARY)),
            },
        },
    );
    l.policy.tls_ports = vec![443];
    l
}

fn running() -> Domain {
    Domain {
        state: DomainState::Running,
        persistent: true,
        nic_link_up: Some(true),
    }
}

/// What discovery finds before the apply: db on dc.hv2, batch on dc.hv1.
pub fn observed_before() -> Observed {
    let mut o = Observed::empty();
    let mut hv1 = ObservedHost::default();
    hv1.domains.insert("web".into(), running());
    hv1.domains.insert("batch".into(), running());
    let mut hv2 = ObservedHost::default();
    hv2.domains.insert("db".into(), running());
    o.hosts.insert(h("dc.hv1"), hv1);
    o.hosts.insert(h("dc.hv2"), hv2);
    o.hosts.insert(h("cloud.c1"), ObservedHost::default());
    o.routing_cores.insert(
        "dc".into(),
        ObservedRoutingCore {
            routes: vec![Route {
                prefix: "10.0.0.0/8".parse().unwrap(),
                via: Some("10.77.0.1".parse().unwrap()),
                dev: None,
                via_smig_tunnel: false,
            }],
            tunnels: vec![],
        },
    );
    o.connections.insert(
        "db".into(),
        vec![
            Connection {
                protocol: Protocol::Tcp,
                local: "192.168.10.12:5432".parse().unwrap(),
                remote: "192.168.10.11:40000".parse().unwrap(),
                ipsec: false,
            },
            Connection {
                protocol: Protocol::Tcp,
                local: "192.168.10.12:51000".parse().unwrap(),
                remote: "192.168.10.11:443".parse().unwrap(),
                ipsec: false,
            },
        ],
    );
    o
}

/// A plan under construction: steps in topological order, edges by key.
#[derive(Default)]
pub struct PlanBuilder {
    pub plan: Plan,
    keys: BTreeMap<String, petgraph::graph::NodeIndex>,
}

impl PlanBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        kind: StepKind,
        subject: &str,
        target: Target,
        action: Action,
        precondition: Vec<Fact>,
        effect: Vec<Fact>,
        inverse: Inverse,
        after: &[&str],
    ) -> String {
        let key = format!("{}:{subject}@{target}", kind.as_str());
        let n = self.plan.graph.add_node(Step {
            key: key.clone(),
            kind,
            subject: subject.into(),
            target,
            action,
            precondition,
            effect,
            inverse,
        });
        for a in after {
            let from = self.keys[*a];
            self.plan.graph.add_edge(from, n, ());
        }
        self.keys.insert(key.clone(), n);
        key
    }
}

fn block(vm: &str, host: &str, addr: &str, peers: &[&str]) -> Action {
    Action::Block {
        vm: vm.into(),
        host: h(host),
        address: addr.parse().unwrap(),
        peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
        allow_ipsec: false,
    }
}

fn unblock(vm: &str, host: &str, addr: &str, peers: &[&str], secure_only: bool) -> Action {
    Action::Unblock {
        vm: vm.into(),
        host: h(host),
        address: addr.parse().unwrap(),
        peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
        secure_only,
    }
}

fn migrate(vm: &str, from: &str, to: &str) -> Action {
    Action::Migrate {
        vm: vm.into(),
        domain: vm.into(),
        from: h(from),
        to: h(to),
        to_uri: "qemu+tls://x/system".into(),
        mode: MigrationMode::Live,
        tls: true,
        paused: false,
        max_downtime_ms: Some(300),
        bandwidth_mibps: None,
    }
}

fn undo(action: Action) -> Inverse {
    Inverse::action(action)
}

/// The plan for [`landscape`] from [`observed_before`], FIG. 3 order (block first) with the
/// target pre-blocked so the VM never arrives open.
pub fn reference_plan(migrate_inverse: Option<Inverse>) -> Plan {
    let mut b = PlanBuilder::default();
    let hh = |s: &str| Target::Host(h(s));
    let db = "192.168.10.12";
    let web = "192.168.10.11";
    let bt = "192.168.20.5";
    let blocked = |vm: &str, host: &str| Fact::Blocked {
        vm: vm.into(),
        host: h(host),
    };
    let not_blocked = |vm: &str, host: &str| Fact::NotBlocked {
        vm: vm.into(),
        host: h(host),
    };
    let running = |d: &str, host: &str| Fact::DomainRunning {
        domain: d.into(),
        host: h(host),
    };
    let absent = |d: &str, host: &str| Fact::DomainAbsent {
        domain: d.into(),
        host: h(host),
    };
    // db: dc.hv2 -> cloud.c1, secured to web on dc.hv1.
    let b0 = b.step(
        StepKind::Block,
        "vm.db",
        hh("dc.hv2"),
        block("db", "dc.hv2", db, &[web]),
        vec![],
        vec![blocked("db", "dc.hv2")],
        undo(unblock("db", "dc.hv2", db, &[web], false)),
        &[],
    );
    let b1 = b.step(
        StepKind::Block,
        "vm.db",
        hh("cloud.c1"),
        block("db", "cloud.c1", db, &[web]),
        vec![],
        vec![blocked("db", "cloud.c1")],
        undo(unblock("db", "cloud.c1", db, &[web], false)),
        &[],
    );
    let m = b.step(
        StepKind::Migrate,
        "vm.db",
        hh("dc.hv2"),
        migrate("db", "dc.hv2", "cloud.c1"),
        vec![
            running("db", "dc.hv2"),
            blocked("db", "dc.hv2"),
            blocked("db", "cloud.c1"),
        ],
        vec![running("db", "cloud.c1"), absent("db", "dc.hv2")],
        migrate_inverse
            .clone()
            .unwrap_or_else(|| undo(migrate("db", "cloud.c1", "dc.hv2"))),
        &[&b0, &b1],
    );
    let responder = b.step(
        StepKind::IpsecInstall,
        "secure_link.web_db",
        hh("dc.hv1"),
        Action::IpsecInstall {
            link: "web_db".into(),
            local: h("dc.hv1"),
            local_address: "10.77.0.11".parse().unwrap(),
            remote: h("cloud.c1"),
            remote_address: "10.78.0.21".parse().unwrap(),
            proposals: vec!["aes256-sha256-modp2048".into()],
            initiate: false,
        },
        vec![],
        vec![],
        undo(Action::IpsecRemove {
            link: "web_db".into(),
            local: h("dc.hv1"),
            remote: h("cloud.c1"),
        }),
        &[&m],
    );
    let i = b.step(
        StepKind::IpsecInstall,
        "secure_link.web_db",
        hh("cloud.c1"),
        Action::IpsecInstall {
            link: "web_db".into(),
            local: h("cloud.c1"),
            local_address: "10.78.0.21".parse().unwrap(),
            remote: h("dc.hv1"),
            remote_address: "10.77.0.11".parse().unwrap(),
            proposals: vec!["aes256-sha256-modp2048".into()],
            initiate: true,
        },
        vec![blocked("db", "cloud.c1")],
        vec![Fact::SaUp {
            link: "web_db".into(),
            host: h("cloud.c1"),
            remote: h("dc.hv1"),
        }],
        undo(Action::IpsecRemove {
            link: "web_db".into(),
            local: h("cloud.c1"),
            remote: h("dc.hv1"),
        }),
        &[&responder],
    );
    let c = b.step(
        StepKind::ConnectionsSecure,
        "vm.db",
        hh("cloud.c1"),
        Action::SecureConnections {
            vm: "db".into(),
            host: h("cloud.c1"),
            address: db.parse().unwrap(),
            tls_ports: vec![443],
        },
        vec![],
        vec![Fact::ConnectionsSecured {
            vm: "db".into(),
            tls_ports: vec![443],
        }],
        Inverse::Nothing,
        &[&i],
    );
    let e = b.step(
        StepKind::Enable,
        "vm.db",
        hh("cloud.c1"),
        unblock("db", "cloud.c1", db, &[web], true),
        vec![Fact::SaUp {
            link: "web_db".into(),
            host: h("cloud.c1"),
            remote: h("dc.hv1"),
        }],
        vec![not_blocked("db", "cloud.c1")],
        undo(block("db", "cloud.c1", db, &[web])),
        &[&c],
    );
    b.step(
        StepKind::Cleanup,
        "vm.db",
        hh("dc.hv2"),
        Action::Cleanup {
            vm: "db".into(),
            host: h("dc.hv2"),
            ipsec_links: vec![],
        },
        vec![absent("db", "dc.hv2")],
        vec![not_blocked("db", "dc.hv2")],
        Inverse::Nothing,
        &[&e],
    );
    // batch: dc.hv1 -> cloud.c1, alone in bsub: tunnel from dc's core while routes converge.
    let cidr: ipnet::Ipv4Net = "192.168.20.0/24".parse().unwrap();
    let tunnel = |add: bool| {
        let (subnet, core, remote, remote_address) = (
            smig::model::Name::from("bsub"),
            smig::model::Name::from("dc"),
            h("cloud.c1"),
            "10.78.0.21".parse().unwrap(),
        );
        if add {
            Action::TunnelAdd {
                subnet,
                cidr,
                core,
                remote,
                remote_address,
            }
        } else {
            Action::TunnelRemove {
                subnet,
                cidr,
                core,
                remote,
                remote_address,
            }
        }
    };
    let core = Target::RoutingCore("dc".into());
    let t0 = b.step(
        StepKind::Block,
        "vm.batch",
        hh("dc.hv1"),
        block("batch", "dc.hv1", bt, &[]),
        vec![],
        vec![blocked("batch", "dc.hv1")],
        undo(unblock("batch", "dc.hv1", bt, &[], false)),
        &[],
    );
    let t1 = b.step(
        StepKind::Block,
        "vm.batch",
        hh("cloud.c1"),
        block("batch", "cloud.c1", bt, &[]),
        vec![],
        vec![blocked("batch", "cloud.c1")],
        undo(unblock("batch", "cloud.c1", bt, &[], false)),
        &[],
    );
    let tm = b.step(
        StepKind::Migrate,
        "vm.batch",
        hh("dc.hv1"),
        migrate("batch", "dc.hv1", "cloud.c1"),
        vec![running("batch", "dc.hv1")],
        vec![running("batch", "cloud.c1"), absent("batch", "dc.hv1")],
        undo(migrate("batch", "cloud.c1", "dc.hv1")),
        &[&t0, &t1],
    );
    let ta = b.step(
        StepKind::TunnelAdd,
        "subnet.bsub",
        core.clone(),
        tunnel(true),
        vec![],
        vec![Fact::TunnelPresent {
            subnet: "bsub".into(),
            core: "dc".into(),
        }],
        undo(tunnel(false)),
        &[&tm],
    );
    let te = b.step(
        StepKind::Enable,
        "vm.batch",
        hh("cloud.c1"),
        unblock("batch", "cloud.c1", bt, &[], true),
        vec![],
        vec![not_blocked("batch", "cloud.c1")],
        undo(block("batch", "cloud.c1", bt, &[])),
        &[&ta],
    );
    let rc = b.step(
        StepKind::RouteCheck,
        "subnet.bsub",
        core.clone(),
        Action::RouteCheck {
            core: "dc".into(),
            subnet: "bsub".into(),
            cidr,
            timeout_s: 2,
            interval_s: 1,
        },
        vec![],
        vec![Fact::RouteLearned {
            core: "dc".into(),
            subnet: "bsub".into(),
            cidr,
        }],
        Inverse::Nothing,
        &[&te],
    );
    let tr = b.step(
        StepKind::TunnelRemove,
        "subnet.bsub",
        core,
        tunnel(false),
        vec![],
        vec![Fact::TunnelAbsent {
            subnet: "bsub".into(),
            core: "dc".into(),
        }],
        undo(tunnel(true)),
        &[&rc],
    );
    b.step(
        StepKind::Cleanup,
        "vm.batch",
        hh("dc.hv1"),
        Action::Cleanup {
            vm: "batch".into(),
            host: h("dc.hv1"),
            ipsec_links: vec![],
        },
        vec![],
        vec![not_blocked("batch", "dc.hv1")],
        Inverse::Nothing,
        &[&tr],
    );
    b.plan
}

/// What rollback must restore: everything but learned routes and reset connections, which the
/// landscape changes by itself.
pub fn restorable(o: &Observed) -> Observed {
    let mut o = o.clone();
    o.connections.clear();
    for c in o.routing_cores.values_mut() {
        c.routes
            .retain(|r| r.via_smig_tunnel || r.dev.as_deref() != Some("learned"));
    }
    o
}

/// Invariant checks on any landscape: each VM on exactly one host, no smig leftovers.
pub fn assert_clean(o: &Observed, vms: &[&str]) {
    for vm in vms {
        let n = o.placements(vm).count();
        assert_eq!(n, 1, "{vm} is defined on {n} hosts: {o:#?}");
    }
    for (id, host) in &o.hosts {
        assert!(
            host.block_rules.is_empty(),
            "block rules left on {id}: {:?}",
            host.block_rules
        );
        assert!(
            host.ipsec.is_empty(),
            "IPsec left on {id}: {:?}",
            host.ipsec
        );
        assert!(host.tunnels.is_empty(), "tunnels left on {id}");
    }
    for (env, c) in &o.routing_cores {
        assert!(c.tunnels.is_empty(), "tunnels left on core {env}");
        assert!(
            c.routes.iter().all(|r| !r.via_smig_tunnel),
            "smig routes left on {env}"
        );
    }
}

/// An engine over `double` with collected events.
pub fn engine(
    double: &Arc<LandscapeDouble>,
    on_failure: OnFailure,
    parallelism: usize,
) -> (Engine, Arc<Mutex<Vec<Event>>>) {
    let (sink, store) = events::collect();
    (
        Engine {
            ctx: ExecContext {
                drivers: Drivers::all(double.clone()),
                landscape: Arc::new(landscape()),
                poll_interval: Some(Duration::from_millis(5)),
            },
            events: sink,
            options: WalkOptions {
                parallelism,
                on_failure,
                ..Default::default()
            },
            discovered: None,
        },
        store,
    )
}

/// The landscape after a successful apply of [`reference_plan`].
pub async fn desired_after() -> Observed {
    let double = Arc::new(LandscapeDouble::new(observed_before()));
    let (engine, _) = engine(&double, OnFailure::Rollback, 4);
    let run = engine
        .apply(
            &reference_plan(None),
            Box::new(smig::state::journal::MemoryJournal::new()),
            &smig::apply::ApplyMeta {
                apply_id: "reference".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        run.report.outcome,
        smig::state::journal::Outcome::Succeeded,
        "{}",
        run.report
    );
    double.observed()
}
