//! Every branch of the planner, built from landscapes in Rust: step kinds, order (edges),
//! target hosts and the parameters drivers get.

mod plan_cases;

use petgraph::graph::NodeIndex;
use petgraph::Direction;
use plan_cases::case;
use smig::model::{DomainState, HostId};
use smig::plan::synthetic::Fixture;
use smig::plan::{
    build, Action, ChangeAction, Fact, Inverse, Plan, PlanError, PlanOptions, StepKind,
};

fn plan(f: &Fixture) -> Plan {
    plan_with(f, PlanOptions::default())
}

fn plan_with(f: &Fixture, opts: PlanOptions) -> Plan {
    match build(&f.desired, &f.observed, &opts) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `N kind subject @ target <- deps` per step, numbered from 1.
fn outline(p: &Plan) -> String {
    let mut out = String::new();
    for n in p.graph.node_indices() {
        let s = &p.graph[n];
        let mut deps: Vec<usize> = p
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|d| d.index() + 1)
            .collect();
        deps.sort();
        out.push_str(&format!(
            "{} {} {} @ {} <- {:?}\n",
            n.index() + 1,
            s.kind,
            s.subject,
            s.target,
            deps
        ));
    }
    out
}

/// The one step of `kind` about `subject` on `target`.
fn find(p: &Plan, kind: StepKind, subject: &str, target: &str) -> NodeIndex {
    let found: Vec<NodeIndex> = p
        .graph
        .node_indices()
        .filter(|&n| {
            let s = &p.graph[n];
            s.kind == kind && s.subject == subject && s.target.to_string() == target
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind} {subject} @ {target} in\n{}",
        outline(p)
    );
    found[0]
}

fn path(p: &Plan, a: NodeIndex, b: NodeIndex) -> bool {
    petgraph::algo::has_path_connecting(&p.graph, a, b, None)
}

fn host(s: &str) -> HostId {
    let (e, h) = s.split_once('.').unwrap();
    HostId::new(e, h)
}

fn assert_sound(p: &Plan) {
    assert!(p.invariants.holds(), "{}", p.invariants);
    for e in p.graph.edge_indices() {
        let (a, b) = p.graph.edge_endpoints(e).unwrap();
        assert!(a.index() < b.index(), "step numbers are not topological");
    }
}

#[test]
fn live_block_first_follows_fig_3() {
    let p = plan(&case("01-live-block-first"));
    assert_eq!(
        outline(&p),
        "1 block vm.db @ dc.hv2 <- []\n\
         2 block vm.db @ cloud.c1 <- []\n\
         3 migrate vm.db @ dc.hv2 <- [1, 2]\n\
         4 ipsec.install secure_link.web_db @ dc.hv1 <- [3]\n\
         5 ipsec.install secure_link.web_db @ cloud.c1 <- [4]\n\
         6 restart vm.db @ cloud.c1 <- [5]\n\
         7 connections.secure vm.db @ cloud.c1 <- [6]\n\
         8 enable vm.db @ cloud.c1 <- [7]\n\
         9 cleanup vm.db @ dc.hv2 <- [8]\n"
    );
    assert_sound(&p);
    let g = &p.graph;
    match &g[NodeIndex::new(2)].action {
        Action::Migrate {
            from,
            to,
            to_uri,
            tls,
            paused,
            max_downtime_ms,
            ..
        } => {
            assert_eq!((from, to), (&host("dc.hv2"), &host("cloud.c1")));
            assert_eq!(to_uri, "qemu+tls://10.78.0.21/system");
            assert!(*tls && *paused);
            assert_eq!(*max_downtime_ms, Some(300));
        }
        a => panic!("{a:?}"),
    }
    // The peer's host loads first, the moving VM's new host loads and initiates.
    assert!(matches!(
        &g[NodeIndex::new(3)].action,
        Action::IpsecInstall { local, remote, initiate: false, .. }
            if local == &host("dc.hv1") && remote == &host("cloud.c1")
    ));
    assert!(matches!(
        &g[NodeIndex::new(4)].action,
        Action::IpsecInstall { local, initiate: true, .. } if local == &host("cloud.c1")
    ));
    assert!(matches!(
        &g[NodeIndex::new(5)].action,
        Action::Resume { .. }
    ));
    assert!(g[NodeIndex::new(5)].precondition.contains(&Fact::SaUp {
        link: "web_db".into(),
        host: host("cloud.c1"),
        remote: host("dc.hv1"),
    }));
    assert!(matches!(
        &g[NodeIndex::new(7)].action,
        Action::Unblock { secure_only: true, peers, .. } if peers == &["192.168.10.11".parse::<std::net::Ipv4Addr>().unwrap()]
    ));
    // Rolling back an enable blocks again: it never re-opens cleartext.
    assert!(matches!(
        g[NodeIndex::new(7)].inverse.as_action(),
        Some(Action::Block { .. })
    ));
    assert!(matches!(
        g[NodeIndex::new(2)].inverse.as_action(),
        Some(Action::Migrate { from, paused: false, .. }) if from == &host("cloud.c1")
    ));
    assert_eq!(p.changes.len(), 2);
    assert_eq!(p.changes[1].address, "vm.db");
    assert_eq!(p.changes[1].action, ChangeAction::Move);
    assert!(p.warnings.is_empty());
}

#[test]
fn prestaged_blocks_the_target_and_installs_ipsec_before_the_move() {
    let p = plan(&case("02-live-prestaged"));
    assert_eq!(
        outline(&p),
        "1 block vm.db @ cloud.c1 <- []\n\
         2 ipsec.install secure_link.web_db @ dc.hv1 <- []\n\
         3 ipsec.install secure_link.web_db @ cloud.c1 <- [2]\n\
         4 migrate vm.db @ dc.hv2 <- [1, 3]\n\
         5 connections.secure vm.db @ cloud.c1 <- [4]\n\
         6 enable vm.db @ cloud.c1 <- [5]\n\
         7 cleanup vm.db @ dc.hv2 <- [6]\n"
    );
    assert_sound(&p);
    // The target's filter lets through only flows carried by the SA; the VM arrives running
    // behind it (libvirt resumes it at the switchover), its SAs up before it leaves.
    assert!(matches!(
        &p.graph[NodeIndex::new(0)].action,
        Action::Block {
            allow_ipsec: true,
            ..
        }
    ));
    let migrate = &p.graph[NodeIndex::new(3)];
    assert!(matches!(
        &migrate.action,
        Action::Migrate { paused: false, .. }
    ));
    assert!(migrate.precondition.contains(&Fact::Blocked {
        vm: "db".into(),
        host: host("cloud.c1"),
    }));
    assert!(migrate.precondition.contains(&Fact::SaUp {
        link: "web_db".into(),
        host: host("cloud.c1"),
        remote: host("dc.hv1"),
    }));
    assert!(migrate.effect.contains(&Fact::DomainRunning {
        domain: "db".into(),
        host: host("cloud.c1"),
    }));
}

#[test]
fn cold_shuts_down_before_migrating_and_starts_after() {
    let p = plan(&case("03-cold"));
    assert_eq!(
        outline(&p),
        "1 block vm.db @ dc.hv2 <- []\n\
         2 block vm.db @ cloud.c1 <- []\n\
         3 shutdown vm.db @ dc.hv2 <- [1]\n\
         4 migrate vm.db @ dc.hv2 <- [2, 3]\n\
         5 ipsec.install secure_link.web_db @ dc.hv1 <- [4]\n\
         6 ipsec.install secure_link.web_db @ cloud.c1 <- [5]\n\
         7 restart vm.db @ cloud.c1 <- [6]\n\
         8 connections.secure vm.db @ cloud.c1 <- [7]\n\
         9 enable vm.db @ cloud.c1 <- [8]\n\
         10 cleanup vm.db @ dc.hv2 <- [9]\n"
    );
    assert_sound(&p);
    let g = &p.graph;
    assert!(matches!(
        g[NodeIndex::new(2)].inverse.as_action(),
        Some(Action::Start { .. })
    ));
    assert!(matches!(
        &g[NodeIndex::new(3)].action,
        Action::Migrate {
            mode: smig::model::MigrationMode::Cold,
            paused: false,
            ..
        }
    ));
    assert!(matches!(&g[NodeIndex::new(6)].action, Action::Start { .. }));
}

#[test]
fn whole_subnet_gets_a_tunnel_until_the_routing_core_learns() {
    let p = plan(&case("04-whole-subnet"));
    assert_eq!(
        outline(&p),
        "1 block vm.db1 @ dc.hv2 <- []\n\
         2 block vm.db1 @ cloud.c1 <- []\n\
         3 migrate vm.db1 @ dc.hv2 <- [1, 2]\n\
         4 ipsec.install secure_link.web_db1 @ dc.hv1 <- [3]\n\
         5 ipsec.install secure_link.web_db1 @ cloud.c1 <- [4]\n\
         6 block vm.db2 @ dc.hv2 <- []\n\
         7 block vm.db2 @ cloud.c1 <- []\n\
         8 migrate vm.db2 @ dc.hv2 <- [6, 7]\n\
         9 tunnel.add subnet.data @ dc.routing_core <- [3, 8]\n\
         10 restart vm.db1 @ cloud.c1 <- [5, 9]\n\
         11 connections.secure vm.db1 @ cloud.c1 <- [10]\n\
         12 enable vm.db1 @ cloud.c1 <- [11]\n\
         13 cleanup vm.db1 @ dc.hv2 <- [12]\n\
         14 ipsec.install secure_link.web_db2 @ dc.hv1 <- [8]\n\
         15 ipsec.install secure_link.web_db2 @ cloud.c1 <- [14]\n\
         16 restart vm.db2 @ cloud.c1 <- [9, 15]\n\
         17 connections.secure vm.db2 @ cloud.c1 <- [16]\n\
         18 enable vm.db2 @ cloud.c1 <- [17]\n\
         19 route.check subnet.data @ dc.routing_core <- [12, 18]\n\
         20 tunnel.remove subnet.data @ dc.routing_core <- [19]\n\
         21 cleanup vm.db2 @ dc.hv2 <- [18]\n"
    );
    assert_sound(&p);
    assert!(matches!(
        &p.graph[NodeIndex::new(8)].action,
        Action::TunnelAdd { core, remote, .. } if core == "dc" && remote == &host("cloud.c1")
    ));
    assert!(matches!(
        p.graph[NodeIndex::new(19)].inverse.as_action(),
        Some(Action::TunnelAdd { .. })
    ));
    assert!(p.changes.iter().any(|c| c.address == "subnet.data"));
}

#[test]
fn a_subnet_left_behind_in_part_gets_no_tunnel() {
    // web stays in dc: subnet app does not move whole.
    let p = plan(&case("01-live-block-first"));
    assert!(p
        .graph
        .node_weights()
        .all(|s| s.kind != StepKind::TunnelAdd && s.kind != StepKind::RouteCheck));
}

#[test]
fn unsecured_nonmanaged_connections_are_reset_before_enable() {
    let p = plan(&case("05-nonmanaged-connections"));
    let restart = find(&p, StepKind::Restart, "vm.db", "cloud.c1");
    let secure = find(&p, StepKind::ConnectionsSecure, "vm.db", "cloud.c1");
    let enable = find(&p, StepKind::Enable, "vm.db", "cloud.c1");
    assert!(p.graph.contains_edge(restart, secure));
    assert!(p.graph.contains_edge(secure, enable));
    assert!(matches!(
        &p.graph[secure].action,
        Action::SecureConnections { tls_ports, .. } if tls_ports == &[443, 636, 5432]
    ));
    assert_eq!(p.graph[secure].inverse, Inverse::Nothing);
    assert_eq!(p.context.must_secure.len(), 1);
    assert_sound(&p);

    // Only secured connections: nothing to reset.
    let f = Fixture::reference()
        .connection("db", "192.168.10.12:5432", "192.168.10.11:51001", false)
        .connection("db", "192.168.10.12:8080", "192.168.10.11:51002", true);
    let p = plan(&f);
    // The step stays (a connection may appear before the apply gets there), but its effect
    // already holds, so a walker skips it, and nothing forces it before enable.
    let secure = p
        .graph
        .node_weights()
        .find(|s| s.kind == StepKind::ConnectionsSecure)
        .expect("connections.secure for a VM behind IPsec");
    assert!(secure.effect.iter().all(|fact| fact.holds(&f.observed)));
    assert!(p.context.must_secure.is_empty());

    // A move between trusted hosts with nothing to reset has no such step.
    let p = plan(&case("07-trusted-to-trusted"));
    assert!(p
        .graph
        .node_weights()
        .all(|s| s.kind != StepKind::ConnectionsSecure));
}

#[test]
fn moving_back_to_trusted_removes_ipsec_only_once_inside() {
    let p = plan(&case("06-back-to-trusted"));
    assert_eq!(
        outline(&p),
        "1 block vm.db @ cloud.c1 <- []\n\
         2 block vm.db @ dc.hv2 <- []\n\
         3 migrate vm.db @ cloud.c1 <- [1, 2]\n\
         4 restart vm.db @ dc.hv2 <- [3]\n\
         5 enable vm.db @ dc.hv2 <- [4]\n\
         6 cleanup vm.db @ cloud.c1 <- [5]\n\
         7 cleanup secure_link.web_db @ dc.hv1 <- [5]\n"
    );
    assert_sound(&p);
    let g = &p.graph;
    assert!(g.node_weights().all(|s| s.kind != StepKind::IpsecInstall));
    assert!(matches!(
        &g[NodeIndex::new(4)].action,
        Action::Unblock {
            secure_only: false,
            ..
        }
    ));
    assert!(matches!(
        &g[NodeIndex::new(5)].action,
        Action::Cleanup { ipsec_links, host: h, .. } if ipsec_links == &["web_db"] && h == &host("cloud.c1")
    ));
    assert!(matches!(
        &g[NodeIndex::new(6)].action,
        Action::IpsecRemove { local, remote, .. } if local == &host("dc.hv1") && remote == &host("cloud.c1")
    ));
    let migrate = NodeIndex::new(2);
    let restart = NodeIndex::new(3);
    for cleanup in [NodeIndex::new(5), NodeIndex::new(6)] {
        assert!(path(&p, migrate, cleanup) && path(&p, restart, cleanup));
    }
    // The block on the untrusted source is undone fail-closed.
    assert!(matches!(
        g[NodeIndex::new(0)].inverse.as_action(),
        Some(Action::Unblock {
            secure_only: true,
            ..
        })
    ));
}

#[test]
fn trusted_to_trusted_is_a_plain_migration() {
    let p = plan(&case("07-trusted-to-trusted"));
    assert_eq!(
        outline(&p),
        "1 block vm.db @ dc.hv2 <- []\n\
         2 block vm.db @ dc.hv3 <- []\n\
         3 migrate vm.db @ dc.hv2 <- [1, 2]\n\
         4 restart vm.db @ dc.hv3 <- [3]\n\
         5 enable vm.db @ dc.hv3 <- [4]\n\
         6 cleanup vm.db @ dc.hv2 <- [5]\n"
    );
    assert_sound(&p);
    assert!(matches!(
        &p.graph[NodeIndex::new(4)].action,
        Action::Unblock {
            secure_only: false,
            ..
        }
    ));
}

#[test]
fn a_new_link_between_vms_that_stay_is_installed_alone() {
    let p = plan(&case("08-new-link-only"));
    assert_eq!(
        outline(&p),
        "1 ipsec.install secure_link.web_db @ dc.hv1 <- []\n\
         2 ipsec.install secure_link.web_db @ cloud.c1 <- [1]\n"
    );
    assert_sound(&p);
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].action, ChangeAction::Create);
    let after = p.changes[0].after.as_ref().unwrap().to_string();
    assert!(after.contains("(sensitive)") && !after.contains("fixture-psk"));
}

#[test]
fn several_vms_run_in_parallel_and_share_steps() {
    let p = plan(&case("09-several-vms"));
    assert_sound(&p);
    // One SA (link app, dc.hv1 <-> cloud.c1) serves db1 and db2: two install steps in all.
    let installs: Vec<_> = p
        .graph
        .node_indices()
        .filter(|&n| p.graph[n].kind == StepKind::IpsecInstall)
        .collect();
    assert_eq!(installs.len(), 2, "{}", outline(&p));
    let init = find(&p, StepKind::IpsecInstall, "secure_link.app", "cloud.c1");
    for vm in ["vm.db1", "vm.db2"] {
        let migrate = find(&p, StepKind::Migrate, vm, "dc.hv2");
        let restart = find(&p, StepKind::Restart, vm, "cloud.c1");
        assert!(path(&p, migrate, installs[0]));
        assert!(p.graph.contains_edge(init, restart));
    }
    // The trusted move of cache is an independent branch.
    let cache: Vec<_> = p
        .graph
        .node_indices()
        .filter(|&n| p.graph[n].subject == "vm.cache")
        .collect();
    assert_eq!(cache.len(), 6);
    for &c in &cache {
        for other in p.graph.node_indices().filter(|n| !cache.contains(n)) {
            assert!(!path(&p, c, other) && !path(&p, other, c));
        }
    }
    // db1 and db2 do not wait for each other's migration.
    let m1 = find(&p, StepKind::Migrate, "vm.db1", "dc.hv2");
    let m2 = find(&p, StepKind::Migrate, "vm.db2", "dc.hv2");
    assert!(!path(&p, m1, m2) && !path(&p, m2, m1));
}

#[test]
fn nothing_to_do_gives_an_empty_plan() {
    let p = plan(&case("10-no-changes"));
    assert!(p.is_empty());
    assert!(p.changes.is_empty());
    assert!(p.invariants.holds());
    assert_eq!(p.context.established.len(), 1);
}

#[test]
fn a_removed_link_has_its_ipsec_removed_past_the_point_of_no_return() {
    let p = plan(&case("11-removed-link"));
    assert_eq!(
        outline(&p),
        "1 cleanup secure_link.old_link @ cloud.c1 <- []\n\
         2 cleanup secure_link.old_link @ dc.hv1 <- []\n"
    );
    for s in p.graph.node_weights() {
        assert!(matches!(s.action, Action::IpsecRemove { .. }));
        assert!(matches!(s.inverse, Inverse::PointOfNoReturn { .. }));
    }
    assert_eq!(p.changes[0].action, ChangeAction::Delete);
}

#[test]
fn insecure_transport_is_refused_unless_allowed() {
    let f = Fixture::reference().cleartext_libvirt("cloud.c1");
    match build(&f.desired, &f.observed, &PlanOptions::default()) {
        Err(PlanError::InvariantViolated { report, plan }) => {
            let r7 = report.get(7).unwrap();
            assert!(!r7.holds);
            assert!(r7.violations[0].contains("migrate vm.db @ dc.hv2 (step 3)"));
            assert!(r7.violations[0].contains("cloud.c1 is not qemu+tls://"));
            assert!(report.get(1).unwrap().holds);
            assert_eq!(plan.graph.node_count(), 9);
        }
        other => panic!("{other:?}"),
    }
    let p = plan(&case("12-insecure-transport-allowed"));
    assert!(p.invariants.holds());
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("allow_insecure_transport"));
    // Cleartext between two trusted hosts is not a breach.
    let f = plan_cases::case("07-trusted-to-trusted").cleartext_libvirt("dc.hv3");
    assert!(plan(&f).warnings.is_empty());
}

#[test]
fn a_shut_off_vm_moves_as_a_definition_and_stays_off() {
    let f = Fixture::reference().vm_state("db", DomainState::ShutOff);
    let p = plan(&f);
    assert_sound(&p);
    assert!(p
        .graph
        .node_weights()
        .all(|s| s.kind != StepKind::Shutdown && s.kind != StepKind::Restart));
    let enable = find(&p, StepKind::Enable, "vm.db", "cloud.c1");
    let init = find(&p, StepKind::IpsecInstall, "secure_link.web_db", "cloud.c1");
    assert!(path(&p, init, enable));
}

#[test]
fn targets_pull_in_dependencies_and_excludes_leave_out() {
    let f = case("09-several-vms");
    let only = |targets: &[&str], excludes: &[&str]| {
        let p = plan_with(
            &f,
            PlanOptions {
                targets: targets.iter().map(|s| s.to_string()).collect(),
                excludes: excludes.iter().map(|s| s.to_string()).collect(),
            },
        );
        let mut subjects: Vec<String> = p
            .graph
            .node_weights()
            .map(|s| s.subject.to_string())
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
    };
    assert_eq!(only(&["vm.cache"], &[]), ["vm.cache"]);
    assert_eq!(
        only(&["secure_link.app"], &[]),
        ["secure_link.app", "vm.db1", "vm.db2"]
    );
    assert_eq!(
        only(&[], &["vm.db2"]),
        ["secure_link.app", "vm.cache", "vm.db1"]
    );
    match build(
        &f.desired,
        &f.observed,
        &PlanOptions {
            targets: vec!["vm.nope".into(), "host.x".into()],
            excludes: vec![],
        },
    ) {
        Err(PlanError::Multiple { errors }) => {
            assert_eq!(errors.len(), 2);
            assert!(errors[0].to_string().contains("vm.nope"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn landscapes_that_do_not_fit_are_clear_errors() {
    use miette::Diagnostic;
    let code = |e: &PlanError| e.code().map(|c| c.to_string()).unwrap_or_default();

    // Discovered nowhere.
    let mut f = Fixture::reference();
    for h in f.observed.hosts.values_mut() {
        h.domains.remove("db");
    }
    let e = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap_err();
    assert_eq!(code(&e), "smig::plan::vm_not_discovered");

    // Running on two hosts.
    let mut f = Fixture::reference();
    let d = f.observed.hosts[&host("dc.hv2")].domains["db"].clone();
    f.observed
        .hosts
        .get_mut(&host("dc.hv1"))
        .unwrap()
        .domains
        .insert("db".into(), d);
    let e = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap_err();
    assert_eq!(code(&e), "smig::plan::vm_on_two_hosts");
    assert!(e.to_string().contains("dc.hv1, dc.hv2"));

    // Target host not discovered.
    let mut f = Fixture::reference();
    f.observed.hosts.remove(&host("cloud.c1"));
    let e = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap_err();
    assert_eq!(code(&e), "smig::plan::host_not_discovered");
    assert!(e.to_string().contains("cloud.c1"));

    // Several problems at once are all reported.
    let mut f = Fixture::reference();
    for h in f.observed.hosts.values_mut() {
        h.domains.clear();
    }
    match build(&f.desired, &f.observed, &PlanOptions::default()).unwrap_err() {
        PlanError::Multiple { errors } => assert_eq!(errors.len(), 2),
        e => panic!("{e:?}"),
    }
}
