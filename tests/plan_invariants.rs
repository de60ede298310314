//! The invariant checker against deliberately broken DAGs: each break must be rejected, with
//! a message naming the steps involved.

mod plan_cases;

use petgraph::graph::NodeIndex;
use plan_cases::case;
use smig::plan::synthetic::Fixture;
use smig::plan::{build, invariants, Action, Plan, PlanOptions, StepKind};

fn good(f: &Fixture) -> Plan {
    let p = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap();
    assert!(p.invariants.holds());
    p
}

fn find(p: &Plan, kind: StepKind, subject: &str) -> NodeIndex {
    p.graph
        .node_indices()
        .find(|&n| p.graph[n].kind == kind && p.graph[n].subject == subject)
        .unwrap_or_else(|| panic!("no {kind} {subject}"))
}

fn remove_edge(p: &mut Plan, a: NodeIndex, b: NodeIndex) {
    let e = p.graph.find_edge(a, b).expect("edge to remove");
    p.graph.remove_edge(e);
}

/// Checks the broken plan: the invariant must fail and a violation must name `step`.
fn rejected(p: &Plan, f: &Fixture, number: u8, step: &str) {
    let report = invariants::check(p, &f.desired);
    assert!(!report.holds(), "broken plan accepted:\n{report}");
    let r = report.get(number).unwrap();
    assert!(!r.holds, "invariant {number} holds:\n{report}");
    assert!(
        r.violations.iter().any(|v| v.contains(step)),
        "no violation names `{step}`:\n{report}"
    );
}

#[test]
fn restart_without_ipsec_ancestor_breaks_invariant_1() {
    let f = case("01-live-block-first");
    let mut p = good(&f);
    let init = NodeIndex::new(4);
    let restart = find(&p, StepKind::Restart, "vm.db");
    remove_edge(&mut p, init, restart);
    rejected(&p, &f, 1, "restart vm.db @ cloud.c1");
    rejected(&p, &f, 1, "enable vm.db @ cloud.c1");
    rejected(&p, &f, 2, "enable vm.db @ cloud.c1");
}

#[test]
fn dropping_the_initiating_install_breaks_invariant_1() {
    let f = case("02-live-prestaged");
    let mut p = good(&f);
    let init = NodeIndex::new(2);
    assert!(matches!(
        p.graph[init].action,
        Action::IpsecInstall { initiate: true, .. }
    ));
    p.graph.remove_node(init);
    // Pre-staged: the VM arrives running, so the migration is what must follow the SA.
    rejected(&p, &f, 1, "migrate vm.db @ dc.hv2");
}

#[test]
fn a_prestaged_migration_not_after_the_sa_breaks_invariant_1() {
    let f = case("02-live-prestaged");
    let mut p = good(&f);
    let migrate = find(&p, StepKind::Migrate, "vm.db");
    assert!(matches!(
        p.graph[migrate].action,
        Action::Migrate { paused: false, .. }
    ));
    let init = NodeIndex::new(2);
    remove_edge(&mut p, init, migrate);
    rejected(&p, &f, 1, "migrate vm.db @ dc.hv2");
}

#[test]
fn initiating_before_the_peer_loaded_breaks_invariant_1() {
    let f = case("01-live-block-first");
    let mut p = good(&f);
    let (resp, init) = (NodeIndex::new(3), NodeIndex::new(4));
    remove_edge(&mut p, resp, init);
    // Keep the responder after the migration but parallel to the initiator.
    rejected(&p, &f, 1, "ipsec.install secure_link.web_db @ cloud.c1");
}

#[test]
fn migrating_before_blocking_breaks_invariant_2() {
    let f = case("01-live-block-first");
    // Reorder: both blocks (source and target) now run after the migration.
    let mut p = good(&f);
    let migrate = NodeIndex::new(2);
    for block in [NodeIndex::new(0), NodeIndex::new(1)] {
        assert_eq!(p.graph[block].kind, StepKind::Block);
        remove_edge(&mut p, block, migrate);
        p.graph.add_edge(migrate, block, ());
    }
    rejected(&p, &f, 2, "migrate vm.db @ dc.hv2");

    // Drop the block steps.
    let mut p = good(&f);
    p.graph
        .retain_nodes(|g, n| g[n].kind != StepKind::Block || g[n].subject != "vm.db");
    rejected(&p, &f, 2, "migrate vm.db");

    // The prestaged block on the target counts only as an ancestor too.
    let f = case("02-live-prestaged");
    let mut p = good(&f);
    let block = find(&p, StepKind::Block, "vm.db");
    let migrate = find(&p, StepKind::Migrate, "vm.db");
    remove_edge(&mut p, block, migrate);
    rejected(&p, &f, 2, "migrate vm.db @ dc.hv2");
}

#[test]
fn enabling_before_securing_connections_breaks_invariant_2() {
    let f = case("05-nonmanaged-connections");
    let secure_edge = |p: &Plan| {
        (
            find(p, StepKind::ConnectionsSecure, "vm.db"),
            find(p, StepKind::Enable, "vm.db"),
        )
    };
    let mut p = good(&f);
    let (secure, enable) = secure_edge(&p);
    remove_edge(&mut p, secure, enable);
    // enable still follows restart, but not connections.secure.
    p.graph
        .add_edge(find(&p, StepKind::Restart, "vm.db"), enable, ());
    rejected(&p, &f, 2, "enable vm.db @ cloud.c1");

    // Drop the connections.secure step altogether.
    let mut p = good(&f);
    let (secure, _) = secure_edge(&p);
    let restart = find(&p, StepKind::Restart, "vm.db");
    let enable_before = find(&p, StepKind::Enable, "vm.db");
    p.graph.add_edge(restart, enable_before, ());
    p.graph.remove_node(secure);
    rejected(&p, &f, 2, "connections.secure of vm.db");
}

#[test]
fn removing_a_tunnel_before_the_route_check_breaks_invariant_3() {
    let f = case("04-whole-subnet");
    let mut p = good(&f);
    let check = find(&p, StepKind::RouteCheck, "subnet.data");
    let remove = find(&p, StepKind::TunnelRemove, "subnet.data");
    remove_edge(&mut p, check, remove);
    rejected(&p, &f, 3, "tunnel.remove subnet.data @ dc.routing_core");

    let mut p = good(&f);
    p.graph.remove_node(check);
    rejected(&p, &f, 3, "tunnel.remove subnet.data");
}

#[test]
fn a_cleartext_migration_breaks_invariant_7() {
    let f = case("01-live-block-first");
    let mut p = good(&f);
    let migrate = NodeIndex::new(2);
    if let Action::Migrate { tls, .. } = &mut p.graph[migrate].action {
        *tls = false;
    }
    rejected(&p, &f, 7, "migrate vm.db @ dc.hv2");
}

#[test]
fn a_cycle_is_rejected() {
    let f = case("01-live-block-first");
    let mut p = good(&f);
    p.graph.add_edge(NodeIndex::new(7), NodeIndex::new(0), ());
    let report = invariants::check(&p, &f.desired);
    assert!(!report.holds());
    assert!(report.failures().contains("cycle"));
}

#[test]
fn shared_ipsec_must_precede_every_vm_that_needs_it() {
    let f = case("09-several-vms");
    let mut p = good(&f);
    let init = p
        .graph
        .node_indices()
        .find(|&n| {
            matches!(
                p.graph[n].action,
                Action::IpsecInstall { initiate: true, .. }
            )
        })
        .unwrap();
    let restart = find(&p, StepKind::Restart, "vm.db2");
    remove_edge(&mut p, init, restart);
    rejected(&p, &f, 1, "restart vm.db2 @ cloud.c1");
    let report = invariants::check(&p, &f.desired);
    // db1 keeps its ordering: only db2's steps are named.
    assert!(report.failures().lines().all(|l| !l.contains("vm.db1")));
}

#[test]
fn every_good_case_passes_and_the_report_lists_four_invariants() {
    for (name, f) in plan_cases::cases() {
        let p = good(&f);
        let numbers: Vec<u8> = p.invariants.results.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [1, 2, 3, 7], "{name}");
    }
}

/// The plan with the context's VM names made afresh from their text, as in a plan read from
/// a file: interned, they are the configuration's names again.
fn with_fresh_names(mut p: Plan) -> Plan {
    p.context.placements = p
        .context
        .placements
        .iter()
        .map(|(vm, h)| (smig::model::Name::from(vm.as_str()), h.clone()))
        .collect();
    p
}

#[test]
fn names_not_shared_with_the_configuration_are_checked_alike() {
    let f = case("01-live-block-first");
    let p = with_fresh_names(good(&f));
    assert!(invariants::check(&p, &f.desired).holds());
    let mut p = p;
    let init = NodeIndex::new(4);
    let restart = find(&p, StepKind::Restart, "vm.db");
    remove_edge(&mut p, init, restart);
    rejected(&p, &f, 1, "restart vm.db @ cloud.c1");
    rejected(&p, &f, 2, "enable vm.db @ cloud.c1");
}
