//! Every branch of the planner, built from landscapes in Rust: step kinds, order (edges) and
//! target hosts.

use smig::plan::synthetic::Fixture;
use smig::plan::{build, Plan, PlanOptions};

fn plan(f: &Fixture) -> Plan {
    match build(&f.desired, &f.observed, &PlanOptions::default()) {
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
            .neighbors_directed(n, petgraph::Direction::Incoming)
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

#[test]
fn live_block_first_follows_fig_3() {
    let p = plan(&Fixture::reference());
    assert_eq!(
        outline(&p),
        "1 block vm.db @ dc.hv2 <- []\n\
         2 migrate vm.db @ dc.hv2 <- [1]\n\
         3 ipsec.install secure_link.web_db @ dc.hv1 <- [2]\n\
         4 ipsec.install secure_link.web_db @ cloud.c1 <- [3]\n\
         5 restart vm.db @ cloud.c1 <- [4]\n\
         6 enable vm.db @ cloud.c1 <- [5]\n\
         7 cleanup vm.db @ dc.hv2 <- [6]\n"
    );
    assert!(p.invariants.holds());
}
