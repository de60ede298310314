//! Hand-built plans for the CLI tests: SPEC.md's reference landscape, `db` moving from
//! `dc.hv2` to `cloud.c1` with the block-first strategy and a new web–db secure link.
#![allow(dead_code)]

use serde_json::json;
use smig::model::{HostId, MigrationMode};
use smig::plan::{
    Action, ChangeAction, Fact, Inverse, Plan, ResourceChange, Step, StepKind, Target,
};
use smig::plan::{InvariantReport, InvariantResult};
use smig::planfile::{Fingerprints, PlanFile};

pub fn host(id: &str) -> HostId {
    HostId(id.into())
}

fn step(kind: StepKind, subject: &str, target: &str, action: Action) -> Step {
    Step {
        key: format!("{kind}:{subject}@{target}"),
        kind,
        subject: subject.into(),
        target: Target::Host(host(target)),
        action,
        precondition: vec![],
        effect: vec![],
        inverse: Inverse::Nothing,
    }
}

/// The reference move as a plan: 7 steps, two changes.
pub fn reference_plan() -> Plan {
    let hv1 = host("dc.hv1");
    let hv2 = host("dc.hv2");
    let c1 = host("cloud.c1");
    let db_addr = "192.168.10.12".parse().unwrap();
    let web_addr = "192.168.10.11".parse().unwrap();
    let mut plan = Plan::default();
    let g = &mut plan.graph;

    let mut block = step(
        StepKind::Block,
        "vm.db",
        "dc.hv2",
        Action::Block {
            vm: "db".into(),
            host: hv2.clone(),
            address: db_addr,
            peers: vec![web_addr],
            allow_ipsec: false,
        },
    );
    block.precondition = vec![Fact::DomainRunning {
        domain: "db".into(),
        host: hv2.clone(),
    }];
    block.effect = vec![Fact::Blocked {
        vm: "db".into(),
        host: hv2.clone(),
    }];
    block.inverse = Inverse::action(Action::Unblock {
        vm: "db".into(),
        host: hv2.clone(),
        address: db_addr,
        peers: vec![web_addr],
        secure_only: false,
    });
    let b = g.add_node(block);

    let mut migrate = step(
        StepKind::Migrate,
        "vm.db",
        "dc.hv2",
        Action::Migrate {
            vm: "db".into(),
            domain: "db".into(),
            from: hv2.clone(),
            to: c1.clone(),
            to_uri: "qemu+tls://10.78.0.21/system".into(),
            mode: MigrationMode::Live,
            tls: true,
            paused: false,
            max_downtime_ms: Some(300),
            bandwidth_mibps: None,
        },
    );
    migrate.precondition = vec![
        Fact::Blocked {
            vm: "db".into(),
            host: hv2.clone(),
        },
        Fact::DomainAbsent {
            domain: "db".into(),
            host: c1.clone(),
        },
    ];
    migrate.effect = vec![
        Fact::DomainRunning {
            domain: "db".into(),
            host: c1.clone(),
        },
        Fact::DomainAbsent {
            domain: "db".into(),
            host: hv2.clone(),
        },
    ];
    migrate.inverse = Inverse::action(Action::Migrate {
        vm: "db".into(),
        domain: "db".into(),
        from: c1.clone(),
        to: hv2.clone(),
        to_uri: "qemu+tls://10.77.0.12/system".into(),
        mode: MigrationMode::Live,
        tls: true,
        paused: false,
        max_downtime_ms: Some(300),
        bandwidth_mibps: None,
    });
    let m = g.add_node(migrate);

    let ipsec = |local: &HostId, remote: &HostId, la: &str, ra: &str| {
        let mut s = step(
            StepKind::IpsecInstall,
            "secure_link.web_db",
            &local.0,
            Action::IpsecInstall {
                link: "web_db".into(),
                local: local.clone(),
                local_address: la.parse().unwrap(),
                remote: remote.clone(),
                remote_address: ra.parse().unwrap(),
                proposals: vec!["aes256-sha256-modp2048".into()],
                initiate: local.0 == "cloud.c1",
            },
        );
        s.effect = vec![Fact::SaUp {
            link: "web_db".into(),
            host: local.clone(),
            remote: remote.clone(),
        }];
        s.inverse = Inverse::action(Action::IpsecRemove {
            link: "web_db".into(),
            local: local.clone(),
            remote: remote.clone(),
        });
        s
    };
    let i1 = g.add_node(ipsec(&hv1, &c1, "10.77.0.11", "10.78.0.21"));
    let i2 = g.add_node(ipsec(&c1, &hv1, "10.78.0.21", "10.77.0.11"));

    let mut secure = step(
        StepKind::ConnectionsSecure,
        "vm.db",
        "cloud.c1",
        Action::SecureConnections {
            vm: "db".into(),
            host: c1.clone(),
            address: db_addr,
            tls_ports: vec![443, 636, 5432],
        },
    );
    secure.effect = vec![Fact::ConnectionsSecured {
        vm: "db".into(),
        tls_ports: vec![443, 636, 5432],
    }];
    let s = g.add_node(secure);

    let mut enable = step(
        StepKind::Enable,
        "vm.db",
        "cloud.c1",
        Action::Unblock {
            vm: "db".into(),
            host: c1.clone(),
            address: db_addr,
            peers: vec![web_addr],
            secure_only: true,
        },
    );
    enable.effect = vec![Fact::NotBlocked {
        vm: "db".into(),
        host: c1.clone(),
    }];
    enable.inverse = Inverse::action(Action::Block {
        vm: "db".into(),
        host: c1.clone(),
        address: db_addr,
        peers: vec![web_addr],
        allow_ipsec: false,
    });
    let e = g.add_node(enable);

    let mut cleanup = step(
        StepKind::Cleanup,
        "vm.db",
        "dc.hv2",
        Action::Cleanup {
            vm: "db".into(),
            host: hv2.clone(),
            ipsec_links: vec![],
        },
    );
    cleanup.effect = vec![Fact::NotBlocked {
        vm: "db".into(),
        host: hv2.clone(),
    }];
    let c = g.add_node(cleanup);

    g.add_edge(b, m, ());
    g.add_edge(m, i2, ());
    g.add_edge(m, s, ());
    g.add_edge(i1, s, ());
    g.add_edge(i2, s, ());
    g.add_edge(s, e, ());
    g.add_edge(e, c, ());

    plan.changes = vec![
        ResourceChange {
            address: "secure_link.web_db".into(),
            action: ChangeAction::Create,
            before: None,
            after: Some(json!({
                "between": ["web", "db"],
                "ipsec": {"proposals": ["aes256-sha256-modp2048"], "auth": {"psk": "(sensitive)"}}
            })),
        },
        ResourceChange {
            address: "vm.db".into(),
            action: ChangeAction::Move,
            before: Some(json!({
                "address": "192.168.10.12", "domain": "db", "host": "dc.hv2",
                "state": "running", "subnet": "app"
            })),
            after: Some(json!({
                "address": "192.168.10.12", "domain": "db", "host": "cloud.c1",
                "state": "running", "subnet": "app"
            })),
        },
    ];
    plan
}

pub fn invariants(all_hold: bool) -> Vec<InvariantResult> {
    let titles = [
        (
            1,
            "No traffic with a peer across an untrusted environment before its IPsec SA is up",
        ),
        (2, "Blocking precedes moving; enabling follows securing"),
        (
            3,
            "A tunnel is removed only after the routing core no longer needs it",
        ),
        (
            7,
            "Migration stream and libvirt control never cross an untrusted network in cleartext",
        ),
    ];
    titles
        .into_iter()
        .map(|(number, title)| {
            let holds = all_hold || number != 1;
            InvariantResult {
                number,
                statement: title.into(),
                waived: if !all_hold && number == 7 {
                    vec!["migrate vm.db @ dc.hv2 (step 2): cleartext migration to cloud.c1, allowed by allow_insecure_transport".into()]
                } else {
                    vec![]
                },
                holds,
                violations: if holds {
                    vec![]
                } else {
                    vec!["enable vm.db @ cloud.c1 (step 6) is reachable without ipsec.install secure_link.web_db @ dc.hv1 (step 3)".into()]
                },
            }
        })
        .collect()
}

pub fn fingerprints() -> Fingerprints {
    Fingerprints {
        config: format!("sha256:{}", "a1".repeat(32)),
        observed: format!("sha256:{}", "b2".repeat(32)),
    }
}

/// The document of `plan` with these invariant results.
pub fn doc_of(plan: &Plan, invariants: Vec<InvariantResult>) -> PlanFile {
    let mut plan = plan.clone();
    plan.invariants = InvariantReport {
        results: invariants,
    };
    PlanFile::new(plan, fingerprints())
}

/// The reference plan as a document.
pub fn reference_doc() -> PlanFile {
    doc_of(&reference_plan(), invariants(true))
}

/// One action of every kind. The match in [`action_kinds_covered`] fails to compile when a
/// variant is added, so the schema tests keep covering all of them.
pub fn every_action() -> Vec<Action> {
    let h = host("dc.hv1");
    let r = host("cloud.c1");
    let a = "192.168.10.11".parse().unwrap();
    let cidr: ipnet::Ipv4Net = "192.168.10.0/24".parse().unwrap();
    let vm = || smig::model::Name::from("web");
    let actions = vec![
        Action::Block {
            vm: vm(),
            host: h.clone(),
            address: a,
            peers: vec![a],
            allow_ipsec: false,
        },
        Action::Unblock {
            vm: vm(),
            host: h.clone(),
            address: a,
            peers: vec![],
            secure_only: true,
        },
        Action::Shutdown {
            vm: vm(),
            domain: vm(),
            host: h.clone(),
        },
        Action::Start {
            vm: vm(),
            domain: vm(),
            host: h.clone(),
        },
        Action::Pause {
            vm: vm(),
            domain: vm(),
            host: h.clone(),
        },
        Action::Resume {
            vm: vm(),
            domain: vm(),
            host: h.clone(),
        },
        Action::Migrate {
            vm: vm(),
            domain: vm(),
            from: h.clone(),
            to: r.clone(),
            to_uri: "qemu+tls://10.78.0.21/system".into(),
            mode: MigrationMode::Cold,
            tls: true,
            paused: true,
            max_downtime_ms: None,
            bandwidth_mibps: Some(100),
        },
        Action::TunnelAdd {
            subnet: "app".into(),
            cidr,
            core: "dc".into(),
            remote: r.clone(),
            remote_address: a,
        },
        Action::TunnelRemove {
            subnet: "app".into(),
            cidr,
            core: "dc".into(),
            remote: r.clone(),
            remote_address: a,
        },
        Action::IpsecInstall {
            link: "l".into(),
            local: h.clone(),
            local_address: a,
            remote: r.clone(),
            remote_address: a,
            proposals: vec!["aes256-sha256-modp2048".into()],
            initiate: true,
        },
        Action::IpsecRemove {
            link: "l".into(),
            local: h.clone(),
            remote: r.clone(),
        },
        Action::SecureConnections {
            vm: vm(),
            host: h.clone(),
            address: a,
            tls_ports: vec![443],
        },
        Action::RouteCheck {
            core: "dc".into(),
            subnet: "app".into(),
            cidr,
            timeout_s: 300,
            interval_s: 5,
        },
        Action::Cleanup {
            vm: vm(),
            host: h.clone(),
            ipsec_links: vec!["l".into()],
        },
    ];
    for a in &actions {
        action_kinds_covered(a);
    }
    actions
}

fn action_kinds_covered(a: &Action) {
    match a {
        Action::Block { .. }
        | Action::Unblock { .. }
        | Action::Shutdown { .. }
        | Action::Start { .. }
        | Action::Pause { .. }
        | Action::Resume { .. }
        | Action::Migrate { .. }
        | Action::TunnelAdd { .. }
        | Action::TunnelRemove { .. }
        | Action::IpsecInstall { .. }
        | Action::IpsecRemove { .. }
        | Action::SecureConnections { .. }
        | Action::RouteCheck { .. }
        | Action::Cleanup { .. } => {}
    }
}

/// One fact of every kind (see [`every_action`]).
pub fn every_fact() -> Vec<Fact> {
    let h = host("dc.hv1");
    let r = host("cloud.c1");
    let d = || smig::model::Name::from("web");
    let facts = vec![
        Fact::DomainRunning {
            domain: d(),
            host: h.clone(),
        },
        Fact::DomainPaused {
            domain: d(),
            host: h.clone(),
        },
        Fact::DomainShutOff {
            domain: d(),
            host: h.clone(),
        },
        Fact::DomainAbsent {
            domain: d(),
            host: h.clone(),
        },
        Fact::Blocked {
            vm: d(),
            host: h.clone(),
        },
        Fact::NotBlocked {
            vm: d(),
            host: h.clone(),
        },
        Fact::SaUp {
            link: "l".into(),
            host: h.clone(),
            remote: r.clone(),
        },
        Fact::IpsecAbsent {
            link: "l".into(),
            host: h.clone(),
        },
        Fact::TunnelPresent {
            subnet: "app".into(),
            core: "dc".into(),
        },
        Fact::TunnelAbsent {
            subnet: "app".into(),
            core: "dc".into(),
        },
        Fact::RouteLearned {
            core: "dc".into(),
            subnet: "app".into(),
            cidr: "192.168.10.0/24".parse().unwrap(),
        },
        Fact::ConnectionsSecured {
            vm: d(),
            tls_ports: vec![443],
        },
    ];
    for f in &facts {
        match f {
            Fact::DomainRunning { .. }
            | Fact::DomainPaused { .. }
            | Fact::DomainShutOff { .. }
            | Fact::DomainAbsent { .. }
            | Fact::Blocked { .. }
            | Fact::NotBlocked { .. }
            | Fact::SaUp { .. }
            | Fact::IpsecAbsent { .. }
            | Fact::SaAbsent { .. }
            | Fact::TunnelPresent { .. }
            | Fact::TunnelAbsent { .. }
            | Fact::RouteLearned { .. }
            | Fact::ConnectionsSecured { .. } => {}
        }
    }
    facts
}

/// A plan with one step per action, every fact, every inverse kind and every change action.
pub fn kitchen_sink_plan() -> Plan {
    let mut plan = Plan::default();
    let facts = every_fact();
    let mut prev = None;
    for (i, action) in every_action().into_iter().enumerate() {
        let kind = StepKind::ALL[i % StepKind::ALL.len()];
        let inverse = match i % 3 {
            0 => Inverse::Nothing,
            1 => Inverse::PointOfNoReturn {
                reason: "post-copy".into(),
            },
            _ => Inverse::action(action.clone()),
        };
        let target = if i % 2 == 0 {
            Target::Host(host("dc.hv1"))
        } else {
            Target::RoutingCore("dc".into())
        };
        let ix = plan.graph.add_node(Step {
            key: format!("{kind}:s{i}@x"),
            kind,
            subject: format!("vm.v{i}").into(),
            target,
            action,
            precondition: facts.clone(),
            effect: facts.clone(),
            inverse,
        });
        if let Some(p) = prev {
            plan.graph.add_edge(p, ix, ());
        }
        prev = Some(ix);
    }
    for (i, action) in [
        ChangeAction::Create,
        ChangeAction::Update,
        ChangeAction::Delete,
        ChangeAction::Move,
    ]
    .into_iter()
    .enumerate()
    {
        plan.changes.push(ResourceChange {
            address: format!("vm.v{i}"),
            action,
            before: (action != ChangeAction::Create).then(|| json!({"host": "dc.hv1", "n": 1})),
            after: (action != ChangeAction::Delete)
                .then(|| json!({"host": "cloud.c1", "n": [1, 2]})),
        });
    }
    plan.warnings.push("insecure transport allowed".into());
    plan
}
