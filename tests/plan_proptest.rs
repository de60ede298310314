//! Property: random landscapes and discovered states give acyclic DAGs, numbered
//! topologically, whose invariants hold; the only refusal is a cleartext migration across an
//! untrusted environment without the policy allowing it.

use petgraph::algo::is_cyclic_directed;
use proptest::prelude::*;
use smig::model::{DomainState, MigrationMode, Strategy as MigStrategy};
use smig::plan::synthetic::{generate, Fixture, SyntheticSpec};
use smig::plan::{build, Action, PlanError, PlanOptions, StepKind};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
struct VmShape {
    subnet: usize,
    now: usize,
    desired: Option<usize>,
    cold: bool,
    prestaged: bool,
    state: u8,
    unsecured_connection: bool,
}

#[derive(Debug, Clone)]
struct Shape {
    /// (trusted, hosts, routing core) per environment; the first is trusted.
    envs: Vec<(bool, usize, bool)>,
    subnets: usize,
    vms: Vec<VmShape>,
    links: Vec<Vec<usize>>,
    sa_up: Vec<bool>,
    cleartext: Vec<usize>,
    allow_insecure: bool,
    removed_link: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    let vm = (
        0..3usize,
        0..16usize,
        prop::option::weighted(0.6, 0..16usize),
        any::<bool>(),
        any::<bool>(),
        0..10u8,
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(subnet, now, desired, cold, prestaged, state, unsecured_connection)| VmShape {
                subnet,
                now,
                desired,
                cold,
                prestaged,
                state,
                unsecured_connection,
            },
        );
    (
        prop::collection::vec((any::<bool>(), 1..4usize, any::<bool>()), 1..4),
        1..4usize,
        prop::collection::vec(vm, 1..9),
        prop::collection::vec(prop::collection::vec(0..9usize, 2..4), 0..6),
        prop::collection::vec(any::<bool>(), 6),
        prop::collection::vec(0..16usize, 0..2),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(envs, subnets, vms, links, sa_up, cleartext, allow_insecure, removed_link)| Shape {
                envs,
                subnets,
                vms,
                links,
                sa_up,
                cleartext,
                allow_insecure,
                removed_link,
            },
        )
}

fn fixture(s: &Shape) -> (Fixture, Vec<String>, HashSet<String>) {
    let mut f = Fixture::new().environment("dc", true, &["h0", "h1"], true);
    let names: Vec<Vec<String>> = s
        .envs
        .iter()
        .map(|(_, n, _)| (0..*n).map(|h| format!("h{h}")).collect())
        .collect();
    let mut hosts = vec!["dc.h0".to_string(), "dc.h1".to_string()];
    for (e, ((trusted, _, core), hs)) in s.envs.iter().zip(&names).enumerate() {
        let env = format!("e{e}");
        let refs: Vec<&str> = hs.iter().map(String::as_str).collect();
        f = f.environment(&env, *trusted, &refs, *core);
        hosts.extend(hs.iter().map(|h| format!("{env}.{h}")));
    }
    for k in 0..s.subnets {
        f = f.subnet(&format!("s{k}"), &format!("10.{k}.0.0/24"));
    }
    let mut vm_names = Vec::new();
    for (i, v) in s.vms.iter().enumerate() {
        let name = format!("v{i}");
        let now = &hosts[v.now % hosts.len()];
        let desired = v.desired.map_or(now, |d| &hosts[d % hosts.len()]);
        let subnet = v.subnet % s.subnets;
        f = f
            .vm(
                &name,
                &format!("s{subnet}"),
                &format!("10.{subnet}.0.{}", 10 + i),
                now,
                desired,
            )
            .migration(
                &name,
                if v.cold {
                    MigrationMode::Cold
                } else {
                    MigrationMode::Live
                },
                if v.prestaged {
                    MigStrategy::Prestaged
                } else {
                    MigStrategy::BlockFirst
                },
            );
        f = match v.state {
            0 => f.vm_state(&name, DomainState::ShutOff),
            1 => f.vm_state(&name, DomainState::Paused),
            _ => f,
        };
        if v.unsecured_connection {
            f = f.connection(
                &name,
                &format!("10.{subnet}.0.{}:3306", 10 + i),
                "10.9.9.9:40000",
                false,
            );
        }
        vm_names.push((name, now.clone()));
    }
    let mut link_count = 0;
    for (l, members) in s.links.iter().enumerate() {
        let mut m: Vec<&str> = members
            .iter()
            .map(|i| vm_names[i % vm_names.len()].0.as_str())
            .collect();
        m.sort();
        m.dedup();
        if m.len() < 2 {
            continue;
        }
        let name = format!("l{l}");
        f = f.link(&name, &m);
        link_count += 1;
        // Some SAs the current placement needs are already up.
        if s.sa_up[l % s.sa_up.len()] {
            let now: HashMap<&str, &String> =
                vm_names.iter().map(|(n, h)| (n.as_str(), h)).collect();
            let (a, b) = (now[m[0]], now[m[1]]);
            if a != b {
                f = f.sa_up(&name, a, b);
            }
        }
    }
    let _ = link_count;
    if s.removed_link && hosts.len() > 2 {
        f = f.sa_up("gone", &hosts[0], &hosts[hosts.len() - 1]);
    }
    let mut cleartext = HashSet::new();
    for c in &s.cleartext {
        let h = &hosts[c % hosts.len()];
        f = f.cleartext_libvirt(h);
        cleartext.insert(h.clone());
    }
    if s.allow_insecure {
        f = f.allow_insecure_transport();
    }
    (f, hosts, cleartext)
}

fn check_plan(f: &Fixture) -> Result<(), TestCaseError> {
    let p = match build(&f.desired, &f.observed, &PlanOptions::default()) {
        Ok(p) => p,
        Err(PlanError::InvariantViolated { report, plan }) => {
            // Only invariant 7 may refuse a generated plan, and only without the allowance.
            prop_assert!(!f.desired.policy.allow_insecure_transport);
            for r in &report.results {
                prop_assert_eq!(r.holds, r.number != 7, "{}", report);
            }
            prop_assert!(!is_cyclic_directed(&plan.graph));
            return Ok(());
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
    };
    prop_assert!(!is_cyclic_directed(&p.graph));
    for e in p.graph.edge_indices() {
        let (a, b) = p.graph.edge_endpoints(e).unwrap();
        prop_assert!(a.index() < b.index());
    }
    prop_assert!(p.invariants.holds(), "{}", p.invariants);
    let keys: HashSet<&str> = p.graph.node_weights().map(|s| s.key.as_str()).collect();
    prop_assert_eq!(keys.len(), p.graph.node_count(), "duplicate step keys");
    // One migration per moving VM, from where it runs to where it is desired.
    let mut migrated = HashSet::new();
    for s in p.graph.node_weights() {
        if let Action::Migrate { vm, to, .. } = &s.action {
            prop_assert!(migrated.insert(vm.clone()));
            prop_assert_eq!(to, &f.desired.vms[vm.as_str()].host);
        }
    }
    let moving = f
        .desired
        .vms
        .values()
        .filter(|vm| {
            f.observed
                .hosts
                .get(&vm.host)
                .is_none_or(|h| !h.domains.contains_key(vm.domain.as_str()))
        })
        .count();
    prop_assert_eq!(migrated.len(), moving);
    // Deterministic: the same inputs give the same plan.
    let again = build(&f.desired, &f.observed, &PlanOptions::default()).unwrap();
    let seq = |p: &smig::plan::Plan| {
        p.graph
            .node_weights()
            .map(|s| s.key.clone())
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(seq(&p), seq(&again));
    prop_assert_eq!(p.graph.edge_count(), again.graph.edge_count());
    // No step kind outside SPEC.md's list, every tunnel removal has its route check.
    let removes = p
        .graph
        .node_weights()
        .filter(|s| s.kind == StepKind::TunnelRemove)
        .count();
    let checks = p
        .graph
        .node_weights()
        .filter(|s| s.kind == StepKind::RouteCheck)
        .count();
    prop_assert_eq!(removes, checks);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_landscapes_give_sound_plans(s in shape()) {
        let (f, _, _) = fixture(&s);
        check_plan(&f)?;
    }

    #[test]
    fn random_synthetic_landscapes_give_sound_plans(seed in any::<u64>(), vms in 1..300usize, moving in 0..100u32) {
        let spec = SyntheticSpec { vms, vms_per_host: 7, vms_per_subnet: 9, moving_percent: moving, seed };
        let (desired, observed) = generate(&spec);
        let f = Fixture::from_parts(desired, observed);
        check_plan(&f)?;
    }
}
